//! Mitigations of collapse applied to an iteration's training set before it is trained on:
//! accumulating the earlier iterations' data instead of replacing it (Gerstgrasser et al. 2024),
//! removing near-duplicates over the whole set, capping the examples of one problem, and mixing in
//! the task's reference solutions (natural data).

use std::collections::{HashMap, HashSet};

use flywheel_core::{Role, TrainExample};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::Task;

use super::dedup::{find_near_duplicates, DedupConfig};
use crate::config::{DataPolicy, MitigationConfig};

/// What the mitigations did to one training set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MitigationStats {
    /// Examples the strategy selected this iteration.
    pub fresh: usize,
    /// Examples carried over from the earlier iterations (`data = "accumulate"`).
    pub carried: usize,
    /// Examples removed as near-duplicates of an earlier one.
    pub near_duplicates: usize,
    /// Examples removed by the per-problem cap.
    pub capped: usize,
    /// Reference solutions added (`natural-fraction`).
    pub natural: usize,
    /// Examples trained on.
    pub kept: usize,
}

/// The training set of an iteration: `fresh` (this iteration's selection), after `earlier` (the
/// previous iteration's training set, already accumulated) when the policy accumulates; then
/// near-duplicates removed (the earlier of two is kept) and at most `max-per-problem` examples of
/// one prompt (the latest ones).
pub fn training_set(
    earlier: Vec<TrainExample>,
    fresh: Vec<TrainExample>,
    config: &MitigationConfig,
) -> (Vec<TrainExample>, MitigationStats) {
    let mut stats = MitigationStats { fresh: fresh.len(), ..Default::default() };
    let mut all = match config.data {
        DataPolicy::Replace => Vec::new(),
        DataPolicy::Accumulate => earlier,
    };
    stats.carried = all.len();
    all.extend(fresh);
    if config.near_duplicate_threshold > 0.0 && all.len() > 1 {
        let texts: Vec<String> = all.iter().map(text_of).collect();
        let dedup = DedupConfig { threshold: config.near_duplicate_threshold, ..DedupConfig::default() };
        let found = find_near_duplicates(&texts, &dedup);
        stats.near_duplicates = found.removed();
        all = all.into_iter().zip(found.keep).filter_map(|(e, keep)| keep.then_some(e)).collect();
    }
    if config.max_per_problem > 0 {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut kept: Vec<TrainExample> = Vec::with_capacity(all.len());
        // The latest examples of a problem are kept: walk from the end, then restore the order.
        for e in all.into_iter().rev() {
            let count = seen.entry(prompt_of(&e)).or_default();
            if *count < config.max_per_problem {
                *count += 1;
                kept.push(e);
            } else {
                stats.capped += 1;
            }
        }
        kept.reverse();
        all = kept;
    }
    stats.kept = all.len();
    (all, stats)
}

/// Adds the task's reference solutions to `set` so that they make `fraction` of it, counting those
/// already in it (carried over from earlier iterations); the problems are drawn with `seed`, each
/// once while there are unused ones. Returns how many were added.
pub fn add_natural(set: &mut Vec<TrainExample>, task: &dyn Task, fraction: f64, seed: u64) -> usize {
    if fraction <= 0.0 || set.is_empty() {
        return 0;
    }
    let references: Vec<TrainExample> = task
        .train_problems()
        .iter()
        .filter_map(|p| Some(TrainExample::single_turn(task.prompt(p), task.reference_solution(p)?)))
        .collect();
    if references.is_empty() {
        tracing::warn!("natural-fraction: the task has no reference solutions; nothing added");
        return 0;
    }
    let present: HashSet<&TrainExample> = set.iter().collect();
    let natural = references.iter().filter(|r| present.contains(r)).count();
    let generated = set.len() - natural;
    let wanted = (generated as f64 * fraction / (1.0 - fraction)).round() as usize;
    let missing = wanted.saturating_sub(natural);
    let mut unused: Vec<&TrainExample> = references.iter().filter(|r| !present.contains(r)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    unused.shuffle(&mut rng);
    let added: Vec<TrainExample> = unused.into_iter().cycle().take(missing).cloned().collect();
    let count = added.len();
    set.extend(added);
    count
}

/// An example's text as the near-duplicate search compares it: every turn, in order.
fn text_of(e: &TrainExample) -> String {
    e.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
}

/// The example's user turns: what identifies its problem.
fn prompt_of(e: &TrainExample) -> String {
    e.messages.iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(prompt: &str, answer: &str) -> TrainExample {
        TrainExample::single_turn(prompt, answer)
    }

    fn config(data: DataPolicy, threshold: f64, cap: usize) -> MitigationConfig {
        MitigationConfig { data, near_duplicate_threshold: threshold, max_per_problem: cap, ..Default::default() }
    }

    #[test]
    fn replace_drops_earlier_data_and_accumulate_keeps_it_first() {
        let earlier = vec![ex("1+1", "2")];
        let fresh = vec![ex("2+2", "4")];
        let (set, stats) = training_set(earlier.clone(), fresh.clone(), &config(DataPolicy::Replace, 0.0, 0));
        assert_eq!(set, fresh);
        assert_eq!((stats.fresh, stats.carried, stats.kept), (1, 0, 1));
        let (set, stats) = training_set(earlier.clone(), fresh.clone(), &config(DataPolicy::Accumulate, 0.0, 0));
        assert_eq!(set, [earlier, fresh].concat());
        assert_eq!((stats.carried, stats.kept), (1, 2));
    }

    #[test]
    fn near_duplicates_across_iterations_are_removed_keeping_the_earlier() {
        let rationale = "Mia buys 4 packs with 6 stickers in each pack, so 4 * 6 = 24 stickers. The answer is 24.";
        let q = "Mia buys 4 packs of 6 stickers. How many stickers does she have?";
        let earlier = vec![ex(q, rationale)];
        let fresh =
            vec![ex(q, &format!("{rationale} Done.")), ex("Other question about 7 pens?", "7 pens. The answer is 7.")];
        let (set, stats) = training_set(earlier.clone(), fresh.clone(), &config(DataPolicy::Accumulate, 0.7, 0));
        assert_eq!(set, vec![earlier[0].clone(), fresh[1].clone()]);
        assert_eq!((stats.near_duplicates, stats.kept), (1, 2));
    }

    #[test]
    fn the_cap_keeps_the_latest_examples_of_a_problem_in_order() {
        let earlier = vec![ex("q1", "old a"), ex("q2", "b")];
        let fresh = vec![ex("q1", "new a"), ex("q1", "newer a")];
        let (set, stats) = training_set(earlier, fresh, &config(DataPolicy::Accumulate, 0.0, 2));
        assert_eq!(set, vec![ex("q2", "b"), ex("q1", "new a"), ex("q1", "newer a")]);
        assert_eq!((stats.capped, stats.kept), (1, 3));
    }

    #[test]
    fn the_temperature_schedule_holds_its_last_value() {
        let c = MitigationConfig { temperature_schedule: vec![0.7, 0.9, 1.1], ..Default::default() };
        let at: Vec<Option<f32>> = (1..=5).map(|k| c.temperature_at(k)).collect();
        assert_eq!(at, [Some(0.7), Some(0.9), Some(1.1), Some(1.1), Some(1.1)]);
        assert_eq!(MitigationConfig::default().temperature_at(1), None);
    }

    #[test]
    fn natural_solutions_make_the_configured_share_counting_carried_ones() {
        let config = crate::config::AdditionConfig {
            max_digits: 3,
            seed_examples: vec![10, 10, 10],
            seed_hinted_fraction: 0.0,
            seed_judge_fraction: 0.0,
            train_per_length: 20,
            eval_per_length: 5,
        };
        let task = crate::tasks::addition::Addition::new(&config, 3);
        let mut set: Vec<TrainExample> = (0..6).map(|i| ex(&format!("{i}+{i}\n"), "model-written")).collect();
        assert_eq!(add_natural(&mut set, &task, 0.25, 1), 2, "2 of 8 = 25%");
        let added = &set[6..];
        for e in added {
            let problem = task
                .train_problems()
                .iter()
                .find(|p| task.prompt(p) == e.messages[0].content)
                .expect("a training problem");
            assert_eq!(e.messages[1].content, task.reference_solution(problem).unwrap());
        }
        // Carried into the next iteration's set, they count: nothing more is needed.
        assert_eq!(add_natural(&mut set, &task, 0.25, 2), 0);
        assert_eq!(add_natural(&mut Vec::new(), &task, 0.25, 1), 0, "an empty set stays empty");
    }
}
