//! Reading a model's judgement of a solution (`CORRECT` / `INCORRECT`), as self-play needs.
//!
//! The textbook bug is `"correct" in reply.lower()`, which is true for "incorrect". Here a judgement is
//! a whole word, and the last judgement word of the reply is the one that counts.

/// A judgement a model gave of a solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The model judged the solution correct.
    Correct,
    /// The model judged the solution incorrect.
    Incorrect,
}

/// The last whole-word `correct` / `incorrect` (any case) of `reply`, or `None` when it has neither.
pub fn parse_judgement(reply: &str) -> Option<Judgement> {
    reply.split(|c: char| !c.is_alphanumeric()).rev().find_map(|word| match word.to_ascii_lowercase().as_str() {
        "correct" => Some(Judgement::Correct),
        "incorrect" | "wrong" => Some(Judgement::Incorrect),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incorrect_is_not_correct() {
        assert_eq!(parse_judgement("INCORRECT"), Some(Judgement::Incorrect));
        assert_eq!(parse_judgement("The solution is incorrect."), Some(Judgement::Incorrect));
        assert_eq!(parse_judgement("Verdict: CORRECT"), Some(Judgement::Correct));
        assert_eq!(parse_judgement("I thought it was incorrect, but it is correct"), Some(Judgement::Correct));
        assert_eq!(parse_judgement("incorrectly formatted"), None);
        assert_eq!(parse_judgement(""), None);
    }
}
