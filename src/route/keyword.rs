//! Words as numbers: the first eight bytes of a word, lowercased and
//! packed into a `u64`, so that testing a word against a keyword is one
//! comparison instead of a byte loop per candidate. The one-pass
//! classifier ([`super::quick`]) tests every word of every simple Query
//! against a dozen keywords.
//!
//! Setting bit 5 of every byte lowercases the ASCII letters, and no other
//! byte a word can hold (digits, `_`, `$`, bytes from 0x80 up) becomes a
//! letter by it: a word's key equals a keyword's exactly when the word is
//! that keyword in any case. A word never holds a zero byte, so the zero
//! bytes that pad a word shorter than eight also fix its length. Words of
//! eight bytes or more keep only their first eight: whoever compares one
//! with a keyword of eight bytes or more also checks the length.

/// A packed, lowercased word (see the module docs).
pub type Key = u64;

/// The key of a keyword of at most eight bytes, for constants (a longer
/// one fails to compile: name its first eight bytes instead).
pub const fn keyword(word: &[u8]) -> Key {
    assert!(word.len() <= 8, "a keyword key holds eight bytes");
    let mut key = 0;
    let mut i = 0;
    while i < word.len() {
        key |= ((word[i] | 0x20) as u64) << (8 * i);
        i += 1;
    }
    key
}

/// The key of the word `src[start..end]`. Reads eight bytes at once when
/// the text goes on that far (nearly always), else byte by byte.
pub fn key_at(src: &[u8], start: usize, end: usize) -> Key {
    let len = end.saturating_sub(start);
    let eight = src
        .get(start..start.saturating_add(8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok());
    let keep = if len >= 8 {
        u64::MAX
    } else {
        (1 << (8 * len)) - 1
    };
    match eight {
        Some(bytes) => (u64::from_le_bytes(bytes) | 0x2020_2020_2020_2020) & keep,
        None => src
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .take(8)
            .enumerate()
            .fold(0, |key, (i, &b)| key | ((b | 0x20) as u64) << (8 * i)),
    }
}

/// The key of `word`.
pub fn key_of(word: &[u8]) -> Key {
    key_at(word, 0, word.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_matches_its_keyword_in_any_case_and_nothing_else() {
        const SELECT: Key = keyword(b"select");
        for word in ["select", "SELECT", "SeLeCt"] {
            assert_eq!(key_of(word.as_bytes()), SELECT, "{word}");
        }
        for word in [
            "selec", "selects", "se1ect", "s_lect", "", "SELECT_", "sélect",
        ] {
            assert_ne!(key_of(word.as_bytes()), SELECT, "{word}");
        }
        assert_eq!(key_of(b"PG_TEMP"), keyword(b"pg_temp"));
        assert_ne!(key_of(b"pg$temp"), keyword(b"pg_temp"));
    }

    #[test]
    fn a_word_inside_a_text_is_read_the_same_near_its_end() {
        let src = b"select ROLLBACK x";
        assert_eq!(key_at(src, 0, 6), keyword(b"select"));
        assert_eq!(key_at(src, 7, 15), keyword(b"rollback"));
        assert_eq!(
            key_at(src, 16, 17),
            keyword(b"x"),
            "fewer than 8 bytes left"
        );
        assert_eq!(key_at(src, 17, 17), 0);
        assert_eq!(key_at(src, 30, 31), 0, "beyond the text");
    }

    #[test]
    fn long_words_keep_their_first_eight_bytes() {
        assert_eq!(key_of(b"TEMPORARY"), keyword(b"temporar"));
        assert_eq!(key_of(b"rollbacks"), keyword(b"rollback"));
    }
}
