//! Preference pairs from an iteration's samples: a kept and a rejected completion of the same
//! problem, in the conversational JSONL shape TRL's DPO trainer reads:
//!
//! ```json
//! {"prompt": [{"role": "user", "content": "..."}],
//!  "chosen": [{"role": "assistant", "content": "..."}],
//!  "rejected": [{"role": "assistant", "content": "..."}]}
//! ```
//!
//! Every kept sample is paired with a different rejected one of its problem whose reward is lower
//! (lowest first), while such samples last. The prompt is the task's plain prompt, never a hinted
//! or revision prompt.

use std::collections::HashMap;

use flywheel_core::{Message, Problem, Role};
use serde::{Deserialize, Serialize};

use crate::records::SampleRecord;
use crate::Task;

/// One line of `pairs.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The conversation so far: the user's question.
    pub prompt: Vec<Message>,
    /// The preferred answer.
    pub chosen: Vec<Message>,
    /// The answer it is preferred to.
    pub rejected: Vec<Message>,
}

/// The preference pairs of `samples` (the records of `task`'s training problems).
pub fn preference_pairs(task: &dyn Task, samples: &[SampleRecord]) -> Vec<PreferencePair> {
    let problems: HashMap<&str, &Problem> = task.train_problems().iter().map(|p| (p.id.as_str(), p)).collect();
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<&SampleRecord>> = HashMap::new();
    for s in samples {
        let group = groups.entry(s.problem_id.as_str()).or_default();
        if group.is_empty() {
            order.push(s.problem_id.as_str());
        }
        group.push(s);
    }
    let mut pairs = Vec::new();
    for id in order {
        let Some(problem) = problems.get(id) else { continue };
        let group = &groups[id];
        let chosen: Vec<&SampleRecord> = group.iter().copied().filter(|s| s.kept).collect();
        let mut rejected: Vec<&SampleRecord> = Vec::new();
        for s in group.iter().filter(|s| !s.kept) {
            let text = s.completion.trim();
            let seen = rejected.iter().chain(&chosen).any(|r| r.completion.trim() == text);
            if !seen && !text.is_empty() {
                rejected.push(s);
            }
        }
        rejected.sort_by(|a, b| a.reward.total_cmp(&b.reward));
        let mut rejected = rejected.into_iter();
        for c in chosen {
            let Some(r) = rejected.by_ref().find(|r| r.reward < c.reward) else { break };
            pairs.push(PreferencePair {
                prompt: vec![Message { role: Role::User, content: task.prompt(problem) }],
                chosen: vec![Message { role: Role::Assistant, content: c.completion.clone() }],
                rejected: vec![Message { role: Role::Assistant, content: r.completion.clone() }],
            });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdditionConfig;
    use crate::records::judge_completions;
    use crate::strategy::testing::completion;
    use crate::tasks::addition::{scratchpad, Addition};

    #[test]
    fn pairs_have_trl_shape_and_plain_prompts() {
        let config = AdditionConfig {
            max_digits: 2,
            seed_examples: vec![1, 1],
            seed_hinted_fraction: 0.0,
            seed_judge_fraction: 0.0,
            train_per_length: 2,
            eval_per_length: 1,
        };
        let task = Addition::new(&config, 2);
        let p = &task.train_problems()[2];
        let (a, b) = p.question.split_once('+').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let texts = [scratchpad(a, b + 1), scratchpad(a, b), scratchpad(a, b + 2), scratchpad(a, b + 1)];
        let completions: Vec<_> = texts.iter().map(|t| completion(t)).collect();
        let mut records = judge_completions(&task.verifier(), p, &task.hinted_prompt(p), &completions, true);
        records[1].kept = true;
        let pairs = preference_pairs(&task, &records);
        assert_eq!(pairs.len(), 1, "one kept sample, one pair");
        let json = serde_json::to_value(&pairs[0]).unwrap();
        assert_eq!(json["prompt"], serde_json::json!([{"role": "user", "content": format!("{}\n", p.question)}]));
        assert_eq!(json["chosen"][0]["role"], "assistant");
        assert_eq!(json["chosen"][0]["content"], texts[1]);
        assert_eq!(json["rejected"][0]["content"], texts[0]);
        assert_eq!(json.as_object().unwrap().len(), 3);
        // Two kept samples find two distinct rejected ones (the repeat of texts[0] is not one).
        records[3].kept = false;
        records[0].kept = true;
        records[0].reward = 1.0;
        let pairs = preference_pairs(&task, &records);
        assert_eq!(pairs.len(), 1, "texts[0] kept; texts[2] is the only other rejected text");
        assert_eq!(pairs[0].rejected[0].content, texts[2]);
        // Nothing kept, or nothing worse: no pair.
        for r in &mut records {
            r.kept = false;
        }
        assert!(preference_pairs(&task, &records).is_empty());
    }
}
