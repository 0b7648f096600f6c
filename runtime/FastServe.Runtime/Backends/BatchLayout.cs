namespace FastServe.Runtime.Backends;

/// <summary>
/// Which rows of a step belong to which sequence, and where each sequence's KV lives. Rows of one sequence
/// are contiguous and in position order. Reused step after step (no allocation once capacity is reached):
/// call <see cref="Clear"/> then <see cref="AddSequence"/> for each sequence of the step.
/// </summary>
public sealed class BatchLayout
{
    private int[] _rowStart;
    private int[] _rowCount;
    private int[] _startPos;
    private int[][] _blockTables;
    private int[] _positions;

    public BatchLayout(int maxSequences = 1, int maxRows = 1)
    {
        _rowStart = new int[maxSequences];
        _rowCount = new int[maxSequences];
        _startPos = new int[maxSequences];
        _blockTables = new int[maxSequences][];
        _positions = new int[maxRows];
    }

    public int SequenceCount { get; private set; }

    public int TotalRows { get; private set; }

    public void Clear()
    {
        SequenceCount = 0;
        TotalRows = 0;
    }

    /// <summary>Adds a sequence whose next <paramref name="rowCount"/> tokens sit at positions
    /// startPos..startPos+rowCount-1. <paramref name="blockTable"/> must cover every position up to the last
    /// one (it is held by reference, not copied).</summary>
    public void AddSequence(int startPos, int rowCount, int[] blockTable)
    {
        if (SequenceCount == _rowStart.Length)
        {
            int n = Math.Max(4, SequenceCount * 2);
            Array.Resize(ref _rowStart, n);
            Array.Resize(ref _rowCount, n);
            Array.Resize(ref _startPos, n);
            Array.Resize(ref _blockTables, n);
        }
        if (TotalRows + rowCount > _positions.Length)
            Array.Resize(ref _positions, Math.Max(TotalRows + rowCount, _positions.Length * 2));

        int s = SequenceCount++;
        _rowStart[s] = TotalRows;
        _rowCount[s] = rowCount;
        _startPos[s] = startPos;
        _blockTables[s] = blockTable;
        for (int i = 0; i < rowCount; i++) _positions[TotalRows + i] = startPos + i;
        TotalRows += rowCount;
    }

    public int RowStart(int seq) => _rowStart[seq];
    public int RowCount(int seq) => _rowCount[seq];
    public int StartPos(int seq) => _startPos[seq];
    public int[] BlockTable(int seq) => _blockTables[seq];

    /// <summary>Position of every row of the step, in row order.</summary>
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, TotalRows);
}
