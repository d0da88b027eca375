use super::*;

fn item<'a>(problem: &'a str, text: &'a str, answer: Option<&'a str>) -> Item<'a> {
    Item { problem, text, answer }
}

fn feed<M: Metric>(mut m: M, texts: &[&str]) -> M::Output {
    for t in texts {
        m.update(&item("p", t, None));
    }
    m.compute()
}

fn w(text: &str) -> Vec<String> {
    words(text)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn distinct_n_counts_over_the_whole_set() {
    // Unigrams a b a | b c: 3 distinct of 5. Bigrams ab ba | bc: 3 of 3. Trigrams: aba, 1 of 1.
    assert_eq!(feed(DistinctN::new(1), &["a b a", "b c"]), Some(0.6));
    assert_eq!(feed(DistinctN::new(2), &["a b a", "b c"]), Some(1.0));
    assert_eq!(feed(DistinctN::new(3), &["a b a", "b c"]), Some(1.0));
    assert_eq!(feed(DistinctN::new(2), &["x x x x", "x x"]), Some(0.25));
    let mut d = DistinctN::new(1);
    d.update(&item("p", "a", None));
    d.clear();
    assert_eq!(d.compute(), None);
}

#[test]
fn moving_ttr_averages_windows_and_ignores_length() {
    // Windows of 2 over a a b b: 1/2, 2/2, 1/2.
    assert!(close(MovingTtr::of(&w("a a b b"), 2).unwrap(), 2.0 / 3.0));
    // Shorter than the window: the plain ratio.
    assert!(close(MovingTtr::of(&w("a a b"), 50).unwrap(), 2.0 / 3.0));
    // The same text repeated: the plain ratio halves, the moving one does not.
    let once = "the cat sat on a mat and a dog sat by the door";
    let twice = format!("{once} {once}");
    let mattr = |t: &str| MovingTtr::of(&w(t), 5).unwrap();
    assert!((mattr(once) - mattr(&twice)).abs() < 0.05, "{} vs {}", mattr(once), mattr(&twice));
    assert_eq!(MovingTtr::of(&[], 5), None);
}

#[test]
fn near_duplicate_rate_is_the_share_removed() {
    let same = "Mia buys 4 packs of 6 stickers, so 4 * 6 = 24 stickers. The answer is 24.";
    let other = "Noah reads 12 pages a day for 3 days: 12 * 3 = 36 pages. The answer is 36.";
    assert!(close(feed(NearDuplicateRate::default(), &[same, other, same]).unwrap(), 1.0 / 3.0));
    assert_eq!(feed(NearDuplicateRate::default(), &[same, other]), Some(0.0));
}

#[test]
fn bleu_by_hand() {
    // p1 3/4, p2 2/3, p3 1/2, p4 0 -> 0.1/1; same length: (0.75 * 2/3 * 0.5 * 0.1)^(1/4).
    let b = SelfBleu::bleu(&w("a b c d"), &[&w("a b c e")]);
    assert!(close(b, 0.025f64.powf(0.25)), "{b}");
    // Two words against four: precisions 1, 1 over two orders, brevity exp(1 - 4/2).
    let b = SelfBleu::bleu(&w("a b"), &[&w("a b c d")]);
    assert!(close(b, (-1.0f64).exp()), "{b}");
    // Clipping: "a a a a" against "a b": unigram 1/4.
    let b = SelfBleu::bleu(&w("a a a a"), &[&w("a b c d")]);
    assert!(close(b, (0.25f64 * 0.1 / 3.0 * 0.1 / 2.0 * 0.1).powf(0.25)), "{b}");
    assert_eq!(feed(SelfBleu::new(1), &["one two three four", "one two three four", "one two three four"]), Some(1.0));
    assert_eq!(feed(SelfBleu::new(1), &["alone"]), None);
}

#[test]
fn self_bleu_rises_as_completions_converge() {
    let varied: Vec<String> =
        (0..40).map(|i| format!("story {i} about {} with {} things", i * 7 % 13, i * 3)).collect();
    let same: Vec<String> = (0..40).map(|i| format!("the answer is {} because it is", i % 2)).collect();
    let score = |texts: &[String]| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        feed(SelfBleu::new(3), &refs).unwrap()
    };
    assert!(score(&varied) < 0.5 && score(&same) > 0.9, "{} {}", score(&varied), score(&same));
}

#[test]
fn answer_entropy_per_problem_in_bits() {
    let mut e = AnswerEntropy::default();
    // p1: 4, 4, 5, none -> 1/2, 1/4, 1/4 -> 1.5 bits; p2: 7, 7 -> 0 bits.
    for (p, a) in
        [("p1", Some("4")), ("p1", Some("4")), ("p1", Some("5")), ("p1", None), ("p2", Some("7")), ("p2", Some("7"))]
    {
        e.update(&item(p, "", a));
    }
    assert!(close(e.compute().unwrap(), 0.75));
}

#[test]
fn repetition_and_length() {
    // abcd bcda cdab dabc abcd: one of five 4-grams repeats.
    assert!(close(Repetition::of(&w("a b c d a b c d")), 0.2));
    assert_eq!(Repetition::of(&w("a b c d")), 0.0);
    assert_eq!(feed(Length::default(), &["a b c", "a b"]), Some((2.5, 0.5)));
}

#[test]
fn quality_of_a_set_and_clear() {
    let items = [item("p1", "1 + 2 = 3. The answer is 3.", Some("3")), item("p1", "The answer is 4.", Some("4"))];
    let q = QualityMetrics::of(items, 0);
    assert_eq!(q.completions, 2);
    assert!(close(q.answer_entropy.unwrap(), 1.0));
    assert_eq!(q.near_duplicate_rate, Some(0.0));
    let mut m = QualityMetrics::new(0);
    m.update(&items[0]);
    m.clear();
    let empty = m.compute();
    assert_eq!((empty.completions, empty.distinct_1, empty.self_bleu), (0, None, None));
}
