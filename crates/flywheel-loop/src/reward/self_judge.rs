//! The self-judge reward: the model rates a sample with a whole number from 0 to a scale.
//!
//! The reply is read strictly: a number in range, optionally labelled (`Score: 7`), optionally
//! followed by `/10` or `out of 10` and a full stop, and nothing else. "7 or 8", "great!", "11" and
//! an empty reply are *missing* scores: counted, and scored 0, so that a model that cannot rate
//! never passes a threshold by accident.

use flywheel_core::{GenerationRequest, Problem, SamplingParams};

use super::{Reward, RewardContext, Scores};
use crate::config::SelfJudgeConfig;
use crate::records::SampleRecord;

/// The model's own rating of each sample, divided by the scale (0 to 1).
#[derive(Debug, Clone)]
pub struct SelfJudge {
    config: SelfJudgeConfig,
}

impl SelfJudge {
    /// The self-judge reward with `config`.
    pub fn new(config: SelfJudgeConfig) -> Self {
        Self { config }
    }
}

impl Reward for SelfJudge {
    fn score(&mut self, cx: &mut RewardContext<'_>, items: &[(&Problem, &SampleRecord)]) -> crate::Result<Scores> {
        let scale = self.config.scale.round() as u32;
        let requests: Vec<GenerationRequest> = items
            .iter()
            .map(|(problem, record)| {
                GenerationRequest::new(cx.task.rating_prompt(problem, &record.completion, scale), 1)
            })
            .collect();
        let params = SamplingParams {
            temperature: self.config.temperature,
            max_new_tokens: self.config.max_new_tokens,
            seed: cx.seed ^ 0x5e1f_ad9e,
            ..SamplingParams::default()
        };
        let replies = cx.generator.generate(&requests, &params, cx.reporter)?;
        let mut scores = Scores::default();
        for reply in &replies {
            match reply.first().and_then(|c| parse_rating(&c.text, f64::from(scale))) {
                Some(value) => scores.values.push(value),
                None => {
                    scores.values.push(0.0);
                    scores.missing += 1;
                }
            }
        }
        Ok(scores)
    }
}

/// A reply's rating divided by `scale`, or `None` unless the reply is exactly a number from 0 to
/// `scale` (see the module documentation for the forms read).
pub fn parse_rating(reply: &str, scale: f64) -> Option<f64> {
    let mut rest = reply.trim();
    for label in ["score", "rating"] {
        if rest.get(..label.len()).is_some_and(|head| head.eq_ignore_ascii_case(label)) {
            rest = rest[label.len()..].trim_start().strip_prefix(':')?.trim_start();
            break;
        }
    }
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, tail) = rest.split_at(end);
    // A full stop directly after the number ends the sentence rather than starting decimals.
    let (number, tail) = match number.strip_suffix('.') {
        Some(n) => (n, &rest[end - 1..]),
        None => (number, tail),
    };
    let value: f64 = number.parse().ok()?;
    let mut tail = tail.trim_start();
    for of in ["/", "out of"] {
        if let Some(t) = tail.strip_prefix(of) {
            let t = t.trim_start();
            let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            if t[..digits].parse::<f64>().ok()? != scale {
                return None;
            }
            tail = t[digits..].trim_start();
            break;
        }
    }
    let tail = tail.strip_prefix('.').unwrap_or(tail);
    (tail.trim().is_empty() && (0.0..=scale).contains(&value)).then(|| value / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_read_strictly() {
        for (reply, expected) in [
            ("7", Some(0.7)),
            (" 10\n", Some(1.0)),
            ("0", Some(0.0)),
            ("7.", Some(0.7)),
            ("7.5", Some(0.75)),
            ("Score: 8", Some(0.8)),
            ("rating: 3/10", Some(0.3)),
            ("6 out of 10.", Some(0.6)),
        ] {
            assert_eq!(parse_rating(reply, 10.0), expected, "{reply:?}");
        }
        for reply in [
            "",
            "great!",
            "11",
            "-3",
            "7 or 8",
            "7/5",
            "7 out of 100",
            "I'd say 7",
            "Score 7",
            "7, because the steps hold",
            "1.2.3",
            ".",
            "Score:",
            "ééé7",
            "7 ü",
        ] {
            assert_eq!(parse_rating(reply, 10.0), None, "{reply:?}");
        }
    }
}
