//! "Did you mean …?": the closest of some known names to one that is not known.

/// The name in `known` closest to `wanted` (by edits, ignoring case), if it is close enough to
/// be a likely typo: at most a quarter of the wanted name's length in edits (at least one, at
/// most three).
/// An unqualified `wanted` (no `.`) is also compared with the part after the first dot.
pub fn closest<'a>(wanted: &str, known: &'a [String]) -> Option<&'a str> {
    let wanted = wanted.to_ascii_lowercase();
    let limit = (wanted.chars().count() / 4).clamp(1, 3);
    known
        .iter()
        .filter_map(|k| {
            let lower = k.to_ascii_lowercase();
            let mut d = distance(&wanted, &lower);
            if !wanted.contains('.') {
                if let Some((_, bare)) = lower.split_once('.') {
                    d = d.min(distance(&wanted, bare));
                }
            }
            (d <= limit).then_some((d, k.as_str()))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edits between two strings, by characters: insertions, deletions, substitutions and swaps
/// of two neighbours (optimal string alignment), so `slwo` is one edit from `slow`.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_the_name_meant() {
        let known = vec!["quickstart.greet".to_string(), "quickstart.sum".to_string()];
        assert_eq!(closest("quickstart.gret", &known), Some("quickstart.greet"));
        assert_eq!(closest("gret", &known), Some("quickstart.greet"));
        assert_eq!(closest("quickstart.resize", &known), None);
        assert_eq!(distance("comand", "command"), 1);
        assert_eq!(closest("q.slwo", &["q.slow".to_string()]), Some("q.slow"));
    }
}
