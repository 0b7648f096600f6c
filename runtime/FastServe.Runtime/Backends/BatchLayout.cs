namespace FastServe.Runtime.Backends;

/// <summary>
/// Which rows of a step belong to which sequence, and where each sequence's KV lives. Rows of one sequence
/// are contiguous and in position order. Reused step after step (no allocation once capacity is reached):
/// call <see cref="Clear"/> then <see cref="AddSequence"/> for each sequence of the step. Block tables are
/// copied in, so a step that runs asynchronously (on a device thread or stream) never sees a sequence's table
/// change under it while the scheduler prepares the next step.
/// </summary>
public sealed class BatchLayout
{
    private int[] _rowStart;
    private int[] _rowCount;
    private int[] _startPos;
    private int[] _tableStart;
    private int[] _tableLength;
    private int[] _tables;
    private int _tablesUsed;
    private int[] _positions;

    public BatchLayout(int maxSequences = 1, int maxRows = 1)
    {
        _rowStart = new int[maxSequences];
        _rowCount = new int[maxSequences];
        _startPos = new int[maxSequences];
        _tableStart = new int[maxSequences];
        _tableLength = new int[maxSequences];
        _tables = new int[Math.Max(16, maxSequences * 4)];
        _positions = new int[maxRows];
    }

    public int SequenceCount { get; private set; }

    public int TotalRows { get; private set; }

    public void Clear()
    {
        SequenceCount = 0;
        TotalRows = 0;
        _tablesUsed = 0;
    }

    /// <summary>Adds a sequence whose next <paramref name="rowCount"/> tokens sit at positions
    /// startPos..startPos+rowCount-1. <paramref name="blockTable"/> must cover every position up to the last
    /// one (it is copied).</summary>
    public void AddSequence(int startPos, int rowCount, ReadOnlySpan<int> blockTable)
    {
        if (SequenceCount == _rowStart.Length)
        {
            int n = Math.Max(4, SequenceCount * 2);
            Array.Resize(ref _rowStart, n);
            Array.Resize(ref _rowCount, n);
            Array.Resize(ref _startPos, n);
            Array.Resize(ref _tableStart, n);
            Array.Resize(ref _tableLength, n);
        }
        if (_tablesUsed + blockTable.Length > _tables.Length)
            Array.Resize(ref _tables, Math.Max(_tablesUsed + blockTable.Length, _tables.Length * 2));
        if (TotalRows + rowCount > _positions.Length)
            Array.Resize(ref _positions, Math.Max(TotalRows + rowCount, _positions.Length * 2));

        int s = SequenceCount++;
        _rowStart[s] = TotalRows;
        _rowCount[s] = rowCount;
        _startPos[s] = startPos;
        _tableStart[s] = _tablesUsed;
        _tableLength[s] = blockTable.Length;
        blockTable.CopyTo(_tables.AsSpan(_tablesUsed));
        _tablesUsed += blockTable.Length;
        for (int i = 0; i < rowCount; i++) _positions[TotalRows + i] = startPos + i;
        TotalRows += rowCount;
    }

    public int RowStart(int seq) => _rowStart[seq];
    public int RowCount(int seq) => _rowCount[seq];
    public int StartPos(int seq) => _startPos[seq];
    public ReadOnlySpan<int> BlockTable(int seq) => _tables.AsSpan(_tableStart[seq], _tableLength[seq]);

    /// <summary>Position of every row of the step, in row order.</summary>
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, TotalRows);
}
