//! Key layout shared by all engines: `group id (u64 BE) ++ suffix`, so one group's keys
//! are contiguous and sort by their big-endian index.

use std::ops::Range;

/// `group ++ suffix` as one key.
pub fn group_key(group: u64, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + suffix.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

/// Splits a key made by [`group_key`] back into the group and the suffix.
pub fn split_group_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let (head, suffix) = key.split_at_checked(8)?;
    let group = u64::from_be_bytes(head.try_into().ok()?);
    Some((group, suffix))
}

/// Keys of `group` whose suffix starts with `prefix`: `[group ++ prefix, group ++ prefix+1)`.
pub fn group_prefix_range(group: u64, prefix: &[u8]) -> Range<Vec<u8>> {
    let start = group_key(group, prefix);
    let end = prefix_successor(&start);
    start..end
}

/// Keys of `group` with a big-endian u64 suffix in `[lo, hi)` (for example a log range).
pub fn group_range(group: u64, prefix: &[u8], lo: u64, hi: u64) -> Range<Vec<u8>> {
    let mut start = group_key(group, prefix);
    start.extend_from_slice(&lo.to_be_bytes());
    let mut end = group_key(group, prefix);
    end.extend_from_slice(&hi.to_be_bytes());
    start..end
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xFF: no finite successor; an all-0xFF key one byte longer bounds it.
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_sort_by_group_then_index() {
        let a = group_key(1, &7u64.to_be_bytes());
        let b = group_key(1, &300u64.to_be_bytes());
        let c = group_key(2, &0u64.to_be_bytes());
        assert!(a < b && b < c);
        assert_eq!(split_group_key(&b), Some((1, &300u64.to_be_bytes()[..])));
    }

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let range = group_prefix_range(5, b"ix");
        assert!(range.contains(&group_key(5, b"ix\x00\x01")));
        assert!(!range.contains(&group_key(5, b"iy")));
        assert!(!range.contains(&group_key(6, b"ix")));
    }
}
