using System.Globalization;
using System.Text;

namespace FastServe.Http.Jinja;

/// <summary>What a <see cref="JinjaToken"/> is.</summary>
internal enum JinjaTokenKind : byte
{
    /// <summary>Template text outside tags, whitespace control already applied.</summary>
    Text,
    /// <summary><c>{{</c>.</summary>
    VarBegin,
    /// <summary><c>}}</c>.</summary>
    VarEnd,
    /// <summary><c>{%</c>.</summary>
    BlockBegin,
    /// <summary><c>%}</c>.</summary>
    BlockEnd,
    Name,
    /// <summary>A string literal, escapes resolved (<see cref="JinjaToken.Text"/>).</summary>
    String,
    /// <summary>An integer literal (<see cref="JinjaToken.Number"/>).</summary>
    Integer,
    /// <summary>A float literal (<see cref="JinjaToken.Number"/>).</summary>
    Float,
    /// <summary>An operator or punctuation (<see cref="JinjaToken.Text"/>: <c>==</c>, <c>(</c>, <c>|</c>, ...).</summary>
    Operator,
    Eof,
}

/// <summary>One token: its kind, text (name, string value, operator or template text), number and 1-based line.</summary>
internal readonly record struct JinjaToken(JinjaTokenKind Kind, string Text, double Number, int Line);

/// <summary>
/// Splits a template into text and tag tokens, with the whitespace rules of the Hugging Face chat-template environment
/// (<c>trim_blocks</c> and <c>lstrip_blocks</c> on, as transformers' <c>apply_chat_template</c> sets them):
/// <c>{%-</c>/<c>{{-</c>/<c>{#-</c> strip all whitespace before the tag, <c>-%}</c>/<c>-}}</c>/<c>-#}</c> all whitespace
/// after it; a block or comment tag alone on its line loses the spaces before it and the newline after it
/// (<c>{%+</c> and <c>+%}</c> opt out). Comments are dropped; <c>{% raw %}</c> … <c>{% endraw %}</c> becomes text.
/// </summary>
internal sealed class JinjaLexer
{
    private readonly string _src;
    private readonly List<JinjaToken> _tokens = [];
    private readonly Stack<char> _balance = new();
    private int _pos;
    private int _line = 1, _lineScan;   // _line is the line of _lineScan; positions only move forward

    private JinjaLexer(string src) => _src = src;

    /// <summary>The tokens of <paramref name="source"/>, ending with <see cref="JinjaTokenKind.Eof"/>; throws
    /// <see cref="JinjaException"/> on an unterminated tag, comment or string, or a character no token starts with.</summary>
    public static List<JinjaToken> Tokenize(string source)
    {
        // As Jinja: every line ending is \n (in text and string literals alike), and one newline ending the template
        // is dropped (keep_trailing_newline off).
        source = source.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        if (source.EndsWith('\n')) source = source[..^1];
        var lx = new JinjaLexer(source);
        lx.Run();
        return lx._tokens;
    }

    private int LineAt(int pos)
    {
        for (; _lineScan < pos && _lineScan < _src.Length; _lineScan++)
            if (_src[_lineScan] == '\n') _line++;
        return _line;
    }

    private void Run()
    {
        bool stripLeading = false, trimNewline = false;
        while (_pos < _src.Length)
        {
            int start = NextTagStart(_pos);
            int end = start < 0 ? _src.Length : start;
            char kind = start < 0 ? '\0' : _src[start + 1];
            char mark = start >= 0 && start + 2 < _src.Length ? _src[start + 2] : '\0';
            // Trailing whitespace of the text first (it is measured against the source), then leading.
            int textEnd = end;
            if (mark == '-') { while (textEnd > _pos && char.IsWhiteSpace(_src[textEnd - 1])) textEnd--; }
            else if (kind is '%' or '#' && mark != '+')
            {
                int k = end;
                while (k > _pos && _src[k - 1] is ' ' or '\t') k--;
                if (k == 0 || _src[k - 1] == '\n') textEnd = k;
            }
            int textStart = _pos;
            if (stripLeading) { while (textStart < textEnd && char.IsWhiteSpace(_src[textStart])) textStart++; }
            else if (trimNewline)
            {
                if (textStart < textEnd && _src[textStart] == '\n') textStart++;
                else if (textStart + 1 < textEnd && _src[textStart] == '\r' && _src[textStart + 1] == '\n') textStart += 2;
            }
            if (textEnd > textStart) _tokens.Add(new JinjaToken(JinjaTokenKind.Text, _src[textStart..textEnd], 0, LineAt(textStart)));
            if (start < 0) break;

            int open = LineAt(start);
            _pos = start + 2 + (mark is '-' or '+' ? 1 : 0);
            if (kind == '#')
            {
                int close = _src.IndexOf("#}", _pos, StringComparison.Ordinal);
                if (close < 0) throw new JinjaException("unterminated comment", open);
                stripLeading = close > _pos && _src[close - 1] == '-';
                trimNewline = !(close > _pos && _src[close - 1] == '+');
                _pos = close + 2;
                continue;
            }
            bool block = kind == '%';
            _tokens.Add(new JinjaToken(block ? JinjaTokenKind.BlockBegin : JinjaTokenKind.VarBegin, "", 0, open));
            char endMark = LexTag(block, open);
            stripLeading = endMark == '-';
            trimNewline = block && endMark != '+';
            if (block && IsRawOpen()) (stripLeading, trimNewline) = LexRaw(stripLeading, trimNewline, open);
        }
        _tokens.Add(new JinjaToken(JinjaTokenKind.Eof, "", 0, LineAt(_src.Length)));
    }

    private int NextTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
            if (_src[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    // Lexes the inside of a tag up to its end (outside any brackets); returns '-' or '+' when the end had that mark.
    private char LexTag(bool block, int openLine)
    {
        _balance.Clear();
        char close = block ? '%' : '}';
        while (true)
        {
            while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos])) _pos++;
            if (_pos >= _src.Length) throw new JinjaException(block ? "unterminated block tag {% … %}" : "unterminated expression {{ … }}", openLine);
            if (_balance.Count == 0)
            {
                char m = _src[_pos];
                int at = m is '-' or '+' ? _pos + 1 : _pos;
                if (at + 1 < _src.Length && _src[at] == close && _src[at + 1] == '}' && (m != '+' || block))
                {
                    _tokens.Add(new JinjaToken(block ? JinjaTokenKind.BlockEnd : JinjaTokenKind.VarEnd, "", 0, LineAt(_pos)));
                    char marked = at > _pos ? m : '\0';
                    _pos = at + 2;
                    return marked;
                }
            }
            LexToken();
        }
    }

    private void LexToken()
    {
        int line = LineAt(_pos);
        char c = _src[_pos];
        if (char.IsAsciiLetter(c) || c == '_')
        {
            int s = _pos;
            while (_pos < _src.Length && (char.IsAsciiLetterOrDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
            _tokens.Add(new JinjaToken(JinjaTokenKind.Name, _src[s.._pos], 0, line));
            return;
        }
        if (char.IsAsciiDigit(c))
        {
            int s = _pos;
            while (_pos < _src.Length && char.IsAsciiDigit(_src[_pos])) _pos++;
            bool isFloat = _pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]);
            if (isFloat)
            {
                _pos++;
                while (_pos < _src.Length && char.IsAsciiDigit(_src[_pos])) _pos++;
            }
            // An exponent: e, an optional sign, digits.
            int e = _pos + 1 < _src.Length && _src[_pos + 1] is '+' or '-' ? _pos + 2 : _pos + 1;
            if (_pos < _src.Length && _src[_pos] is 'e' or 'E' && e < _src.Length && char.IsAsciiDigit(_src[e]))
            {
                isFloat = true;
                _pos = e;
                while (_pos < _src.Length && char.IsAsciiDigit(_src[_pos])) _pos++;
            }
            var text = _src[s.._pos];
            if (!double.TryParse(text, NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent, CultureInfo.InvariantCulture, out double v)
                || (!isFloat && v > long.MaxValue))
                throw new JinjaException($"number out of range: {text}", line);
            _tokens.Add(new JinjaToken(isFloat ? JinjaTokenKind.Float : JinjaTokenKind.Integer, text, v, line));
            return;
        }
        if (c is '\'' or '"')
        {
            _tokens.Add(new JinjaToken(JinjaTokenKind.String, LexString(c, line), 0, line));
            return;
        }
        if (_pos + 1 < _src.Length)
        {
            var two = _src.AsSpan(_pos, 2);
            if (two is "==" or "!=" or "<=" or ">=" or "//" or "**")
            {
                _tokens.Add(new JinjaToken(JinjaTokenKind.Operator, two.ToString(), 0, line));
                _pos += 2;
                return;
            }
        }
        switch (c)
        {
            case '(' or '[' or '{':
                if (_balance.Count >= 64) throw new JinjaException("brackets nested too deeply", line);
                _balance.Push(c switch { '(' => ')', '[' => ']', _ => '}' });
                break;
            case ')' or ']' or '}':
                if (_balance.Count == 0 || _balance.Pop() != c) throw new JinjaException($"unexpected '{c}'", line);
                break;
            case '+' or '-' or '*' or '/' or '%' or '~' or '|' or '.' or ',' or ':' or '=' or '<' or '>':
                break;
            default:
                throw new JinjaException($"unexpected character '{c}' in a tag", line);
        }
        _tokens.Add(new JinjaToken(JinjaTokenKind.Operator, c.ToString(), 0, line));
        _pos++;
    }

    private string LexString(char quote, int line)
    {
        var sb = new StringBuilder();
        for (_pos++; _pos < _src.Length; _pos++)
        {
            char c = _src[_pos];
            if (c == quote)
            {
                _pos++;
                return sb.ToString();
            }
            if (c != '\\' || _pos + 1 >= _src.Length)
            {
                sb.Append(c);
                continue;
            }
            char e = _src[++_pos];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case '\\' or '\'' or '"': sb.Append(e); break;
                case '\n': break;   // a line continuation
                case 'x' or 'u':
                    int len = e == 'x' ? 2 : 4;
                    if (_pos + len < _src.Length && int.TryParse(_src.AsSpan(_pos + 1, len), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int code))
                    {
                        sb.Append((char)code);
                        _pos += len;
                    }
                    else sb.Append('\\').Append(e);
                    break;
                default: sb.Append('\\').Append(e); break;   // Python keeps unknown escapes as written
            }
        }
        throw new JinjaException("unterminated string", line);
    }

    private bool IsRawOpen()
    {
        // ... BlockBegin, Name "raw", BlockEnd
        int n = _tokens.Count;
        return n >= 3 && _tokens[n - 3].Kind == JinjaTokenKind.BlockBegin && _tokens[n - 2] is { Kind: JinjaTokenKind.Name, Text: "raw" }
            && _tokens[n - 1].Kind == JinjaTokenKind.BlockEnd;
    }

    // Replaces the raw tag's tokens with the text up to {% endraw %}; returns the whitespace flags after endraw.
    private (bool StripLeading, bool TrimNewline) LexRaw(bool stripLeading, bool trimNewline, int openLine)
    {
        _tokens.RemoveRange(_tokens.Count - 3, 3);
        var m = RawEnd.Match(_src, _pos);
        if (!m.Success) throw new JinjaException("unterminated {% raw %}", openLine);
        int s = _pos, e = m.Index;
        if (stripLeading) { while (s < e && char.IsWhiteSpace(_src[s])) s++; }
        else if (trimNewline && s < e && _src[s] == '\n') s++;
        if (m.Groups[1].Length > 0) { while (e > s && char.IsWhiteSpace(_src[e - 1])) e--; }
        if (e > s) _tokens.Add(new JinjaToken(JinjaTokenKind.Text, _src[s..e], 0, LineAt(s)));
        _pos = m.Index + m.Length;
        string tail = m.Groups[2].Value;
        return (tail == "-", tail != "+");
    }

    private static readonly System.Text.RegularExpressions.Regex RawEnd = new(@"\{%([-+]?)\s*endraw\s*([-+]?)%\}", System.Text.RegularExpressions.RegexOptions.CultureInvariant);
}
