//! "Did you mean …?": the known names nearest to one typed, for errors
//! about an unknown environment or setting.

/// The names among `known` nearest to `typed` by edit distance, closest
/// first, at most three: those within a third of the typed name's length
/// (at least 2 edits), so `prdo` finds `prod` but `x` finds nothing.
pub fn nearest<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (typed.chars().count() / 3).max(2);
    let mut found: Vec<(usize, &str)> = known
        .into_iter()
        .filter(|k| *k != typed)
        .map(|k| (strsim::damerau_levenshtein(typed, k), k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    found.sort();
    found.dedup();
    found.into_iter().take(3).map(|(_, k)| k).collect()
}

/// ` (did you mean a or b?)`, or nothing when no name is near.
pub fn did_you_mean<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let near = nearest(typed, known);
    if near.is_empty() {
        return String::new();
    }
    format!(" (did you mean {}?)", near.join(" or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_name_and_strangers_find_nothing() {
        let envs = ["prod", "staging", "dev"];
        assert_eq!(nearest("prdo", envs), ["prod"]);
        assert_eq!(nearest("stagign", envs), ["staging"]);
        assert!(nearest("europe-west", envs).is_empty());
        assert_eq!(
            did_you_mean("trusted_key", ["trusted_keys", "tls_key"]),
            " (did you mean trusted_keys?)"
        );
        assert_eq!(did_you_mean("qqqq", envs), "");
    }
}
