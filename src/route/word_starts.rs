//! Finding the words of a statement that start with a given set of
//! letters, sixteen bytes at a time.
//!
//! The session-state pre-check ([`super::session::may_have_effects`])
//! runs on every statement sent inside a transaction, where nothing else
//! has looked at the text. Byte by byte it cost about 9 instructions a
//! byte, some 700 for each of a TPC-B-like transaction's UPDATEs. On
//! x86_64 SSE2 (part of the architecture, so no feature check is needed)
//! classifies sixteen bytes in a handful of instructions; elsewhere the
//! byte loop runs. Both find exactly the same positions (tested against
//! each other on generated text).

/// Bytes that are part of a word: ASCII letters and digits, `_`, and every
/// byte of a multi-byte UTF-8 character (as PostgreSQL's lexer reads
/// identifiers).
pub fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Calls `check` with the position of every word of `sql` whose first
/// byte is an ASCII letter that is, in lower case, one of `letters` (at
/// most six), in order, until `check` says true; returns whether it did.
pub fn any_word_start(sql: &[u8], letters: &[u8], check: impl FnMut(usize) -> bool) -> bool {
    debug_assert!(
        letters.len() <= 6 && letters.iter().all(u8::is_ascii_lowercase),
        "up to six lower-case letters"
    );
    #[cfg(target_arch = "x86_64")]
    {
        sse2::any_word_start(sql, letters, check)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytewise(sql, letters, check)
    }
}

/// [`any_word_start`] one byte at a time.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn bytewise(sql: &[u8], letters: &[u8], mut check: impl FnMut(usize) -> bool) -> bool {
    let mut at = 0;
    while at < sql.len() {
        let first = sql[at];
        if !is_word_byte(first) {
            at += 1;
            continue;
        }
        if first.is_ascii_alphabetic() && letters.contains(&(first | 0x20)) && check(at) {
            return true;
        }
        at += 1;
        while at < sql.len() && is_word_byte(sql[at]) {
            at += 1;
        }
    }
    false
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
    };

    pub fn any_word_start(
        sql: &[u8],
        letters: &[u8],
        mut check: impl FnMut(usize) -> bool,
    ) -> bool {
        // Unused letter slots repeat the first: the same matches.
        let first = letters.first().copied().unwrap_or(0);
        let mut wanted = [first; 6];
        for (slot, &l) in wanted.iter_mut().zip(letters) {
            *slot = l;
        }
        // Whether the byte before the block is part of a word.
        let mut word_before = 0u32;
        let mut at = 0;
        while at < sql.len() {
            let mut tail = [0u8; 16];
            let block: &[u8; 16] = match sql[at..].first_chunk::<16>() {
                Some(block) => block,
                None => {
                    // Zero bytes end words: the padding starts none.
                    tail[..sql.len() - at].copy_from_slice(&sql[at..]);
                    &tail
                }
            };
            let (word, letter) = masks(block, &wanted);
            let starts = word & !((word << 1) | word_before);
            let mut found = starts & letter;
            while found != 0 {
                if check(at + found.trailing_zeros() as usize) {
                    return true;
                }
                found &= found - 1;
            }
            word_before = (word >> 15) & 1;
            at += 16;
        }
        false
    }

    /// Bit masks over the sixteen bytes: which are part of a word, and
    /// which are a letter in `wanted` (either case).
    fn masks(block: &[u8; 16], wanted: &[u8; 6]) -> (u32, u32) {
        // SAFETY: SSE2 is part of x86_64, so its instructions are always
        // there; the load reads the 16 bytes `block` holds, unaligned.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let splat = |b: u8| _mm_set1_epi8(b as i8);
            let within = |x: __m128i, lo: u8, hi: u8| {
                _mm_and_si128(
                    _mm_cmpgt_epi8(x, splat(lo - 1)),
                    _mm_cmplt_epi8(x, splat(hi + 1)),
                )
            };
            // Setting bit 5 lower-cases letters and makes no other byte a
            // letter; bytes from 0x80 compare as negative and stay out.
            let lower = _mm_or_si128(v, splat(0x20));
            let letter_class = within(lower, b'a', b'z');
            let digit = within(v, b'0', b'9');
            let underscore = _mm_cmpeq_epi8(v, splat(b'_'));
            let high = _mm_cmplt_epi8(v, _mm_setzero_si128());
            let word = _mm_or_si128(
                _mm_or_si128(letter_class, digit),
                _mm_or_si128(underscore, high),
            );
            let is = |c: u8| _mm_cmpeq_epi8(lower, splat(c));
            let letter = _mm_or_si128(
                _mm_or_si128(_mm_or_si128(is(wanted[0]), is(wanted[1])), is(wanted[2])),
                _mm_or_si128(_mm_or_si128(is(wanted[3]), is(wanted[4])), is(wanted[5])),
            );
            (
                _mm_movemask_epi8(word) as u32,
                _mm_movemask_epi8(_mm_and_si128(letter, letter_class)) as u32,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A way to find word starts, as the tests call it.
    type Find = fn(&[u8], &[u8], &mut dyn FnMut(usize) -> bool) -> bool;

    /// Every position `find` offers.
    fn positions(find: Find, sql: &[u8], letters: &[u8]) -> Vec<usize> {
        let mut seen = Vec::new();
        find(sql, letters, &mut |at| {
            seen.push(at);
            false
        });
        seen
    }

    fn starts(sql: &[u8], letters: &[u8]) -> Vec<usize> {
        positions(|s, l, check| any_word_start(s, l, check), sql, letters)
    }

    fn starts_bytewise(sql: &[u8], letters: &[u8]) -> Vec<usize> {
        positions(|s, l, check| bytewise(s, l, check), sql, letters)
    }

    #[test]
    fn finds_the_words_that_start_with_the_letters() {
        let sql = b"UPDATE pgbench_accounts SET abalance = 1 WHERE aid = 2; select s2";
        assert_eq!(starts(sql, b"sp"), vec![7, 24, 56, 63]);
        assert_eq!(starts(sql, b"u"), vec![0]);
        assert!(starts(sql, b"z").is_empty());
        // A letter inside a word, after a digit or `_`, or after a
        // multi-byte character starts nothing.
        assert!(starts("x_s 9s és".as_bytes(), b"s").is_empty());
        // Across the sixteen-byte boundary: the word goes on.
        let long = b"aaaaaaaaaaaaaaassss sss";
        assert_eq!(starts(long, b"s"), vec![20]);
        let edge = b"aaaaaaaaaaaaaaa sss";
        assert_eq!(starts(edge, b"s"), vec![16]);
    }

    #[test]
    fn stops_at_the_first_position_check_accepts() {
        let mut seen = 0;
        assert!(any_word_start(b"set a; set b; set c", b"s", |at| {
            seen += 1;
            at == 7
        }));
        assert_eq!(seen, 2);
        assert!(!any_word_start(b"", b"s", |_| true));
    }

    /// Generated text of the bytes that matter (letters of both cases,
    /// digits, `_`, blanks, punctuation, bytes from 0x80, and the bytes
    /// next to the letters' ranges), of every length around the block
    /// size: both ways find the same positions.
    #[test]
    fn agrees_with_the_byte_loop_on_generated_text() {
        const ALPHABET: &[u8] = b"sSpPrRtTdDlLaZz09_ ;-.\"'@[`{\x7f\x80\xc3\xa9\xff\t\n\x00";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for case in 0..40_000 {
            let len = case % 53;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ALPHABET[(state % ALPHABET.len() as u64) as usize]
                })
                .collect();
            for letters in [&b"srtdpl"[..], b"s", b"zl"] {
                assert_eq!(
                    starts(&text, letters),
                    starts_bytewise(&text, letters),
                    "{text:?} {letters:?}"
                );
            }
        }
    }
}
