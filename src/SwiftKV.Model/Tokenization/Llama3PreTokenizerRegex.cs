// The Llama 3 pre-tokenizer regex rewritten for .NET's UTF-16 regex engine.
// .NET's \p{L} and \p{N} test single UTF-16 code units, so a letter outside the BMP (CJK Extension B
// "𠀀", mathematical "𝐇𝐞𝐥𝐥𝐨", digits "𝟏𝟐") is seen as two surrogates of category Cs and lands in the
// punctuation branch, while tiktoken / Hugging Face (code-point regexes) treat it as a letter. The pattern
// below spells out, as surrogate-pair alternations built from .NET's own Unicode tables, which supplementary
// code points are letters and numbers; BMP text matches exactly as with the original pattern.
// Layout: L = letter, N = number, O = neither and not white space; each is a BMP class or a surrogate pair.
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace SwiftKV.Model.Tokenization;

internal static class Llama3PreTokenizerRegex
{
    public static Regex Create() => new(BuildPattern(), RegexOptions.Compiled | RegexOptions.CultureInvariant);

    public static string BuildPattern()
    {
        string supLetter = SurrogatePairs(IsLetter);
        string supNumber = SurrogatePairs(IsNumber);
        string letter = $@"(?:\p{{L}}|{supLetter})";
        string number = $@"(?:\p{{N}}|{supNumber})";
        const string lone = @"(?:[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF])";
        string other = $@"(?:[^\s\p{{L}}\p{{N}}\uD800-\uDFFF]|(?!{supLetter}|{supNumber})[\uD800-\uDBFF][\uDC00-\uDFFF]|{lone})";
        // [^\r\n\p{L}\p{N}] = white space other than CR/LF, or "other".
        string prefix = $@"(?:[^\S\r\n]|{other})";
        return $@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|{prefix}?{letter}+|{number}{{1,3}}| ?{other}+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    }

    static bool IsLetter(UnicodeCategory c) => c is UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter
        or UnicodeCategory.TitlecaseLetter or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter;

    static bool IsNumber(UnicodeCategory c) => c is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber
        or UnicodeCategory.OtherNumber;

    /// <summary>An alternation of "high[lows]" matching exactly the supplementary code points in the category set.</summary>
    static string SurrogatePairs(Func<UnicodeCategory, bool> inSet)
    {
        var alternatives = new List<string>();
        string? previousLows = null;
        int runStart = 0;
        void Close(int lastHigh)
        {
            if (previousLows is null) return;
            string highs = runStart == lastHigh ? Escape(runStart) : $"[{Escape(runStart)}-{Escape(lastHigh)}]";
            alternatives.Add(highs + previousLows);
        }
        for (int high = 0xD800; high <= 0xDBFF; high++)
        {
            var lows = new StringBuilder();
            int low = 0xDC00;
            while (low <= 0xDFFF)
            {
                if (!inSet(Rune.GetUnicodeCategory(new Rune((char)high, (char)low)))) { low++; continue; }
                int start = low;
                while (low + 1 <= 0xDFFF && inSet(Rune.GetUnicodeCategory(new Rune((char)high, (char)(low + 1))))) low++;
                lows.Append(start == low ? Escape(start) : $"{Escape(start)}-{Escape(low)}");
                low++;
            }
            string? current = lows.Length == 0 ? null : $"[{lows}]";
            if (current != previousLows)
            {
                Close(high - 1);
                previousLows = current;
                runStart = high;
            }
        }
        Close(0xDBFF);
        return alternatives.Count == 0 ? "(?!)" : "(?:" + string.Join("|", alternatives) + ")";
    }

    static string Escape(int codeUnit) => $@"\u{codeUnit:X4}";
}
