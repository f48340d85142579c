//! Byte encodings of the `kv` and `rev` column families.
//!
//! `kv` keys are `memcomparable(user key) ‖ !main_rev` (big-endian): all versions of a user
//! key are adjacent, newest first, and user keys sort in byte order. The memcomparable form
//! escapes `0x00` as `00 FF` and ends with `00 01`, so no encoded key is a prefix of another
//! and a seek to `enc(k) ‖ !R` lands on the newest version of `k` at or below revision `R`.

use super::Revision;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// Appends the order-preserving, prefix-free encoding of `key`.
pub fn encode_user_key(key: &[u8], out: &mut Vec<u8>) {
    out.reserve(key.len() + 2);
    for &b in key {
        if b == ESCAPE {
            out.extend_from_slice(&[ESCAPE, ESCAPED_ZERO]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

/// The encoded user key: every version of `key` starts with it.
pub fn user_key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    encode_user_key(key, &mut out);
    out
}

/// The `kv` key of `key` at revision `main`.
pub fn kv_key(key: &[u8], main: Revision) -> Vec<u8> {
    let mut out = user_key_prefix(key);
    out.extend_from_slice(&(!(main as u64)).to_be_bytes());
    out
}

/// A key just past every version of the user key whose encoding is `prefix`.
pub fn after_all_versions(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 9);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&[0xFF; 9]);
    out
}

/// Splits a `kv` key into the user key and its main revision; `None` if malformed.
pub fn decode_kv_key(raw: &[u8]) -> Option<(Vec<u8>, Revision)> {
    if raw.len() < 10 {
        return None;
    }
    let (enc, rev) = raw.split_at(raw.len() - 8);
    let rev = !u64::from_be_bytes(rev.try_into().ok()?);
    let mut key = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let b = enc[i];
        if b != ESCAPE {
            key.push(b);
            i += 1;
            continue;
        }
        match enc.get(i + 1) {
            Some(&ESCAPED_ZERO) => {
                key.push(0);
                i += 2;
            }
            Some(&TERMINATOR) if i + 2 == enc.len() => return Some((key, rev as Revision)),
            _ => return None,
        }
    }
    None
}

/// The `rev` key of a change: `main ‖ sub`, so a scan yields changes in revision order.
pub fn rev_key(main: Revision, sub: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(main as u64).to_be_bytes());
    out[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    out
}

pub fn decode_rev_key(raw: &[u8]) -> Option<(Revision, i64)> {
    if raw.len() != 16 {
        return None;
    }
    let main = u64::from_be_bytes(raw[..8].try_into().ok()?);
    let sub = u64::from_be_bytes(raw[8..].try_into().ok()?);
    Some((main as Revision, sub as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_order_is_byte_order() {
        let keys: [&[u8]; 9] = [
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"\xff",
        ];
        for w in keys.windows(2) {
            assert!(user_key_prefix(w[0]) < user_key_prefix(w[1]), "{:?} < {:?}", w[0], w[1]);
            assert!(kv_key(w[0], 1) < kv_key(w[1], 100));
            assert!(after_all_versions(&user_key_prefix(w[0])) < kv_key(w[1], i64::MAX));
        }
    }

    #[test]
    fn versions_sort_newest_first() {
        assert!(kv_key(b"k", 9) < kv_key(b"k", 3));
        assert!(kv_key(b"k", 3) < after_all_versions(&user_key_prefix(b"k")));
    }

    #[test]
    fn round_trip() {
        for key in [&b""[..], b"\x00", b"a\x00\x01\xff", b"plain/key"] {
            assert_eq!(decode_kv_key(&kv_key(key, 42)), Some((key.to_vec(), 42)));
        }
        assert_eq!(decode_rev_key(&rev_key(7, 3)), Some((7, 3)));
        assert_eq!(decode_kv_key(b"short"), None);
        assert_eq!(decode_kv_key(b"a\x00\x05\x00\x00\x00\x00\x00\x00\x00\x01"), None);
    }
}
