use super::*;
use crate::quality::planted::{planted_corpus, score};

#[test]
fn shingles_are_word_trigrams_with_punctuation_as_words() {
    // "a b c d": {abc, bcd}; "a b c e": {abc, bce}: one shared of three.
    let (x, y) = (shingles("a b c d"), shingles("A  b c\te"));
    assert_eq!((x.len(), y.len()), (2, 2));
    assert!((jaccard(&x, &y) - 1.0 / 3.0).abs() < 1e-12);
    // An operator is a word: the two equations share no trigram ("8 * 4", "* 4 =", "4 = 32").
    assert_eq!(jaccard(&shingles("8 * 4 = 32"), &shingles("8 + 4 = 12")), 0.0);
    // A sentence's full stop is its own word; a decimal point is part of the number.
    assert_eq!(shingles("costs 3.5 dollars."), shingles("costs 3.5 dollars ."));
    assert_ne!(shingles("costs 3.5 dollars"), shingles("costs 3 5 dollars"));
    // Fewer than three words: one shingle; nothing: none.
    assert_eq!(shingles("hi there").len(), 1);
    assert!(shingles("  ").is_empty());
    assert_eq!(jaccard(&[], &[]), 1.0);
    assert_eq!(jaccard(&[1, 2, 3, 4], &[3, 4, 5, 6, 7, 8]), 2.0 / 8.0);
}

#[test]
fn signatures_estimate_the_jaccard_similarity() {
    let hasher = MinHasher::new(512, 3);
    // Sets of 200 with 120 in common: J = 120 / 280.
    let a: Vec<u64> = (0..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let b: Vec<u64> = (80..280u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let exact = 120.0 / 280.0;
    let estimate = estimated_jaccard(&hasher.signature(&a), &hasher.signature(&b));
    // Standard error sqrt(J (1 - J) / 512) = 0.022: four of them.
    assert!((estimate - exact).abs() < 0.088, "{estimate} vs {exact}");
    assert_eq!(estimated_jaccard(&hasher.signature(&a), &hasher.signature(&a)), 1.0);
}

#[test]
fn banding_makes_a_pair_at_the_threshold_a_candidate_almost_surely() {
    let c = DedupConfig::default();
    assert_eq!(c.rows(), 4);
    assert!(c.candidate_probability(0.7) > 0.9998);
    assert!(c.candidate_probability(0.2) < 0.06);
    assert!(DedupConfig { num_perm: 100, ..c }.validate().is_err());
    assert!(DedupConfig { threshold: 0.0, ..c }.validate().is_err());
}

/// The bug of a dedup window: the copy of the first text comes last, thousands of texts later.
#[test]
fn a_copy_is_found_however_far_apart_and_only_the_first_is_kept() {
    let corpus = planted_corpus(3000, 0.0, 9);
    let mut texts = corpus.texts.clone();
    let first = texts[0].clone();
    texts.push(format!("{first} extra"));
    texts.push(first.clone());
    let found = find_near_duplicates(&texts, &DedupConfig::default());
    let n = texts.len() as u32;
    let pairs: Vec<(u32, u32)> = found.pairs.iter().map(|p| (p.a, p.b)).collect();
    assert!(pairs.contains(&(0, n - 1)) && pairs.contains(&(0, n - 2)) && pairs.contains(&(n - 2, n - 1)), "{pairs:?}");
    assert!(found.pairs.iter().all(|p| p.jaccard >= 0.7));
    assert!(found.keep[0] && !found.keep[n as usize - 1] && !found.keep[n as usize - 2]);
    // The random texts are not near-duplicates of one another.
    assert_eq!(found.removed(), 2, "{:?}", &found.pairs);
}

#[test]
fn recall_on_planted_pairs_at_or_above_the_threshold() {
    let corpus = planted_corpus(20_000, 0.2, 4);
    let found = find_near_duplicates(&corpus.texts, &DedupConfig::default());
    let report = score(&corpus, &found, 0.7);
    let at_threshold = report.bands.iter().find(|b| (b.lo - 0.7).abs() < 1e-9).unwrap();
    assert!(at_threshold.pairs >= 200, "{report:?}");
    assert!(report.recall >= 0.97, "{report:?}");
    assert_eq!(report.precision, 1.0);
    assert_eq!(report.below_threshold_reported, 0);
    // Pairs far below the threshold are candidates sometimes, reported never.
    assert!(found.candidates as usize > found.pairs.len());
}

#[test]
fn a_flood_of_identical_texts_is_one_cluster() {
    let mut texts = vec!["the same rationale, word for word, again and again".to_string(); 500];
    texts.push("something else entirely, with other words in it".to_string());
    let found = find_near_duplicates(&texts, &DedupConfig::default());
    assert_eq!(found.removed(), 499);
    assert!(found.keep[0] && found.keep[500]);
    // The chain, not all 124,750 pairs.
    assert!(found.pairs.len() < 2 * 500, "{}", found.pairs.len());
}
