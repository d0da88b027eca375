//! Self-play: the model plays solver and verifier. It samples solutions of every training
//! problem; then, in a verifier's role, judges each one with a prompt whose reply must end in
//! CORRECT or INCORRECT (read as whole words by [`parse_judgement`]: "incorrect" is never
//! "correct"; a reply with neither counts as missing, never as a pass). A solution's quality is
//! the share of its judgements that say CORRECT; solutions at or above `quality-threshold` are kept,
//! best first. Where none is, the model writes revisions from the rejected attempts and their
//! critiques, which are judged the same way.
//!
//! Self-play never uses the gold answers to choose: its value is that it runs on questions without
//! them. The gold verdict of every sample is still recorded, and afterwards measures the judge
//! ([`JudgeTally`]): how many CORRECT verdicts were right (precision), how many right solutions were
//! called CORRECT (recall). A judge that says CORRECT to everything poisons the data, and the
//! metrics show it.

use flywheel_core::{GenerationRequest, Problem, SamplingParams};
use flywheel_verify::{parse_judgement, Judgement};
use serde::{Deserialize, Serialize};

use super::{
    context, grow, sample_and_judge, sampling_params, training_example, Collected, Context, Strategy, StrategyStats,
    TrainingSet,
};
use crate::config::SelfPlayConfig;
use crate::records::{JudgeRecord, SampleRecord};

/// Rejected attempts shown to a revision, at most.
const ATTEMPTS_SHOWN: usize = 3;

/// Self-play's counters: the judge measured against the gold answers, and the revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfPlayStats {
    /// The judge's verdicts against the verifier's.
    pub judge: JudgeTally,
    /// Problems none of whose solutions was kept, so revisions were written.
    pub revised_problems: usize,
    /// Revisions kept.
    pub revisions_kept: usize,
}

/// Judgements counted against the gold verdict. A positive is a reply that says CORRECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JudgeTally {
    /// CORRECT for a right solution.
    pub true_positive: usize,
    /// CORRECT for a wrong solution.
    pub false_positive: usize,
    /// INCORRECT for a wrong solution.
    pub true_negative: usize,
    /// INCORRECT for a right solution.
    pub false_negative: usize,
    /// Replies with no verdict, of right solutions.
    pub unparsed_right: usize,
    /// Replies with no verdict, of wrong solutions.
    pub unparsed_wrong: usize,
}

impl JudgeTally {
    /// Adds the judgements of `record`, whose gold verdict is `record.correct`.
    pub fn add(&mut self, record: &SampleRecord) {
        let Some(judge) = &record.judge else { return };
        if record.correct {
            self.true_positive += judge.correct;
            self.false_negative += judge.incorrect;
            self.unparsed_right += judge.unparsed;
        } else {
            self.false_positive += judge.correct;
            self.true_negative += judge.incorrect;
            self.unparsed_wrong += judge.unparsed;
        }
    }

    /// Share of CORRECT verdicts given to right solutions; `None` without any CORRECT verdict.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positive, self.true_positive + self.false_positive)
    }

    /// Share of the judgements of right solutions that say CORRECT (a missing verdict is a miss);
    /// `None` when no right solution was judged.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positive, self.true_positive + self.false_negative + self.unparsed_right)
    }

    /// Every judgement counted.
    pub fn judgements(&self) -> usize {
        self.true_positive
            + self.false_positive
            + self.true_negative
            + self.false_negative
            + self.unparsed_right
            + self.unparsed_wrong
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The judge's record of `replies`.
pub fn read_judgements(replies: Vec<String>) -> JudgeRecord {
    let verdicts: Vec<Option<Judgement>> = replies.iter().map(|r| parse_judgement(r)).collect();
    let correct = verdicts.iter().filter(|v| **v == Some(Judgement::Correct)).count();
    let incorrect = verdicts.iter().filter(|v| **v == Some(Judgement::Incorrect)).count();
    let unparsed = verdicts.len() - correct - incorrect;
    let quality = if replies.is_empty() { 0.0 } else { correct as f64 / replies.len() as f64 };
    JudgeRecord { replies, correct, incorrect, unparsed, quality }
}

/// The indices of the solutions kept: quality at least `threshold`, best first (ties in sampling
/// order), distinct texts, at most `cap`. Only the judge's quality decides, never the gold verdict.
pub fn select_by_quality(records: &[SampleRecord], threshold: f64, cap: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..records.len()).filter(|&i| records[i].reward >= threshold).collect();
    order.sort_by(|&a, &b| records[b].reward.total_cmp(&records[a].reward).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.len() == cap {
            break;
        }
        if !kept.iter().any(|&k| records[k].completion.trim() == records[i].completion.trim()) {
            kept.push(i);
        }
    }
    kept
}

/// Self-play as a [`Strategy`].
#[derive(Debug, Clone)]
pub struct SelfPlay {
    config: SelfPlayConfig,
}

impl SelfPlay {
    /// Self-play with `config`.
    pub fn new(config: SelfPlayConfig) -> Self {
        Self { config }
    }

    /// Judges every record of `groups` (the solutions of `problems[i]` in `groups[i]`) in one
    /// batch, setting its judge record and its reward (the quality). Returns the tokens generated.
    fn judge(
        &self,
        cx: &mut Context<'_>,
        problems: &[&Problem],
        groups: &mut [Vec<SampleRecord>],
        seed: u64,
    ) -> crate::Result<u64> {
        let requests: Vec<GenerationRequest> = problems
            .iter()
            .zip(groups.iter())
            .flat_map(|(p, records)| {
                records
                    .iter()
                    .map(|r| GenerationRequest::new(cx.task.judge_prompt(p, &r.completion), self.config.judge_samples))
            })
            .collect();
        let params = SamplingParams {
            temperature: self.config.judge_temperature,
            max_new_tokens: self.config.judge_max_new_tokens,
            seed,
            ..SamplingParams::default()
        };
        let reporter = cx.reporter;
        let replies = cx.judge().generate(&requests, &params, reporter)?;
        let mut tokens = 0;
        for (record, replies) in groups.iter_mut().flatten().zip(replies) {
            tokens += replies.iter().map(|c| c.tokens as u64).sum::<u64>();
            let judge = read_judgements(replies.into_iter().map(|c| c.text).collect());
            record.reward = judge.quality;
            record.judge = Some(judge);
        }
        Ok(tokens)
    }

    /// The revision request of a problem: its first rejected solutions, in sampling order, with
    /// their first critiques.
    fn revise_request(
        &self,
        cx: &Context<'_>,
        problem: &Problem,
        rejected: &[SampleRecord],
        shots: &[flywheel_core::Message],
    ) -> GenerationRequest {
        let attempts: Vec<(&str, &str)> = rejected
            .iter()
            .take(ATTEMPTS_SHOWN)
            .map(|r| {
                let critique = r.judge.as_ref().and_then(|j| j.replies.first()).map_or("", String::as_str);
                (r.completion.as_str(), critique)
            })
            .collect();
        GenerationRequest::new(cx.task.revise_prompt(problem, &attempts), self.config.revisions)
            .with_context(shots.to_vec())
    }
}

impl Strategy for SelfPlay {
    fn collect(&mut self, cx: &mut Context<'_>) -> crate::Result<Collected> {
        let config = self.config.clone();
        let task = cx.task;
        let sampling = config.sampling();
        let (problems, mut solutions, mut tokens) = grow(cx, &sampling)?;
        tokens += self.judge(cx, &problems, &mut solutions, cx.seed ^ 0x1d9e)?;

        let mut kept: Vec<Vec<usize>> =
            solutions.iter().map(|r| select_by_quality(r, config.quality_threshold, config.keep_per_problem)).collect();
        let unsolved: Vec<usize> = (0..problems.len()).filter(|&i| kept[i].is_empty()).collect();

        let mut revisions: Vec<Vec<SampleRecord>> = Vec::new();
        let mut revisions_kept = 0;
        if config.revisions > 0 && !unsolved.is_empty() {
            let revised: Vec<&Problem> = unsolved.iter().map(|&i| problems[i]).collect();
            let shots = context(task, &sampling);
            let requests: Vec<GenerationRequest> =
                unsolved.iter().map(|&i| self.revise_request(cx, problems[i], &solutions[i], &shots)).collect();
            let params = SamplingParams {
                temperature: config.revise_temperature,
                seed: cx.seed ^ 0x2e7f,
                ..sampling_params(&sampling, cx.seed)
            };
            let (mut records, revise_tokens) = sample_and_judge(cx, &revised, &requests, &params, false)?;
            tokens += revise_tokens;
            for r in records.iter_mut().flatten() {
                r.revision = true;
            }
            tokens += self.judge(cx, &revised, &mut records, cx.seed ^ 0x3e8f)?;
            for (records, &i) in records.iter().zip(&unsolved) {
                let chosen = select_by_quality(records, config.quality_threshold, config.keep_per_problem);
                revisions_kept += chosen.len();
                // Revision indices follow the problem's solutions in `solutions[i] ++ revisions`.
                kept[i] = chosen.into_iter().map(|j| solutions[i].len() + j).collect();
            }
            revisions = records;
        }

        // Each problem's solutions followed by its revisions, where it has any.
        let mut revised = unsolved.iter().zip(revisions).peekable();
        let mut groups: Vec<Vec<SampleRecord>> = Vec::with_capacity(problems.len());
        for (i, mut records) in solutions.into_iter().enumerate() {
            if revised.peek().is_some_and(|(&j, _)| j == i) {
                records.extend(revised.next().expect("peeked").1);
            }
            groups.push(records);
        }
        let mut tally = JudgeTally::default();
        let mut examples = Vec::new();
        for ((problem, records), kept) in problems.iter().zip(&mut groups).zip(&kept) {
            for &k in kept {
                records[k].kept = true;
                examples.push(training_example(task, problem, &records[k]));
            }
            records.iter().for_each(|r| tally.add(r));
        }
        Ok(Collected {
            samples: groups.into_iter().flatten().collect(),
            sets: vec![TrainingSet { label: format!("quality >= {}", config.quality_threshold), examples }],
            tokens,
            stats: StrategyStats::SelfPlay(SelfPlayStats {
                judge: tally,
                revised_problems: unsolved.len(),
                revisions_kept,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use flywheel_core::NullReporter;

    use super::*;
    use crate::strategy::testing::{arith_word, Scripted};
    use crate::tasks::ChatProblems;
    use crate::Task;

    fn task() -> ChatProblems {
        arith_word(6, 2, 0.0, 5)
    }

    fn config(extra: &str) -> SelfPlayConfig {
        toml::from_str(&format!("samples-per-problem = 2\ntemperature = 0.8\nmax-new-tokens = 9\n{extra}")).unwrap()
    }

    /// Solutions: the first of each problem right, the second wrong. The judge's reply is `verdict`
    /// of (solution right?); revisions are right.
    fn play(config: SelfPlayConfig, verdict: fn(bool, &str) -> &'static str) -> Collected {
        let task = task();
        let answers: std::collections::HashMap<String, String> =
            task.train_problems().iter().map(|p| (p.question.clone(), p.answer.clone())).collect();
        let mut model = Scripted(move |prompt: &str, i| {
            let question = answers.keys().find(|q| prompt.contains(q.as_str())).expect("a question in the prompt");
            let answer = &answers[question];
            if prompt.starts_with("Problem:") && prompt.contains("Proposed solution") {
                verdict(prompt.contains(&format!("The answer is {answer}.")), prompt).to_owned()
            } else if prompt.contains("Earlier attempts") {
                format!("Revised: {answer}.\nThe answer is {answer}.")
            } else if i == 0 {
                format!("Worked: {answer}.\nThe answer is {answer}.")
            } else {
                "Guessed.\nThe answer is 100001.".to_owned()
            }
        });
        let mut cx = Context { task: &task, generator: &mut model, judge: None, seed: 4, reporter: &NullReporter };
        SelfPlay::new(config).collect(&mut cx).expect("collect")
    }

    fn tally(out: &Collected) -> JudgeTally {
        match &out.stats {
            StrategyStats::SelfPlay(s) => s.judge,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incorrect_is_never_read_as_correct() {
        let out =
            play(config(""), |right, _| if right { "Each step holds. CORRECT" } else { "The sum is off: incorrect." });
        let t = tally(&out);
        assert_eq!((t.true_positive, t.true_negative, t.false_positive, t.false_negative), (6, 6, 0, 0));
        assert_eq!((t.precision(), t.recall()), (Some(1.0), Some(1.0)));
        assert!(out.samples.iter().filter(|r| r.kept).all(|r| r.correct));
        assert_eq!(out.sets[0].examples.len(), 6);
    }

    #[test]
    fn a_judge_that_approves_everything_is_measured_not_trusted() {
        let out = play(config("keep-per-problem = 2"), |_, _| "CORRECT");
        let t = tally(&out);
        assert_eq!(t.precision(), Some(0.5));
        assert_eq!(t.recall(), Some(1.0));
        // Self-play keeps what its judge approves, wrong answers too: the gold never decides.
        let kept: Vec<&SampleRecord> = out.samples.iter().filter(|r| r.kept).collect();
        assert_eq!(kept.len(), 12);
        assert_eq!(kept.iter().filter(|r| r.correct).count(), 6);
    }

    #[test]
    fn unreadable_verdicts_are_missing_and_rejected_problems_are_revised() {
        let out = play(config("revisions = 1"), |right, _| if right { "Looks fine to me." } else { "INCORRECT" });
        let t = tally(&out);
        assert_eq!((t.unparsed_right, t.true_negative), (6 + 6, 6), "the revisions are right, and unreadable too");
        assert_eq!(t.recall(), Some(0.0));
        assert_eq!(t.precision(), None);
        assert!(out.sets[0].examples.is_empty(), "nothing was judged CORRECT");
        let StrategyStats::SelfPlay(stats) = &out.stats else { unreachable!() };
        assert_eq!((stats.revised_problems, stats.revisions_kept), (6, 0));
        let revisions: Vec<&SampleRecord> = out.samples.iter().filter(|r| r.revision).collect();
        assert_eq!(revisions.len(), 6);
        // The revision prompt shows the rejected attempts and their critiques, never the gold answer
        // as a hint, and the example would be saved with the plain prompt.
        assert!(revisions.iter().all(|r| r.prompt.contains("Guessed.") && r.prompt.contains("INCORRECT")));
        assert!(revisions.iter().all(|r| !r.prompt.contains("Hint")));
    }

    #[test]
    fn kept_revisions_train_with_the_plain_prompt() {
        // The judge approves only revisions, so every problem is revised and its revision kept.
        let out =
            play(config("revisions = 1"), |_, prompt| if prompt.contains("Revised") { "CORRECT" } else { "INCORRECT" });
        let StrategyStats::SelfPlay(stats) = &out.stats else { unreachable!() };
        assert_eq!((stats.revised_problems, stats.revisions_kept), (6, 6));
        assert!(out.samples.iter().filter(|r| r.kept).all(|r| r.revision && r.completion.starts_with("Revised")));
        let task = task();
        let prompts: Vec<String> = task.train_problems().iter().map(|p| task.prompt(p)).collect();
        assert_eq!(out.sets[0].examples.len(), 6);
        for (example, prompt) in out.sets[0].examples.iter().zip(&prompts) {
            assert_eq!(&example.messages[0].content, prompt);
        }
    }

    #[test]
    fn a_separate_judge_judges_and_the_solver_only_solves() {
        let task = task();
        let mut solver = Scripted(|prompt: &str, _| {
            assert!(!prompt.contains("Proposed solution"), "the solver was asked to judge");
            "Guessed.\nThe answer is 100001.".to_owned()
        });
        let mut judge = Scripted(|prompt: &str, _| {
            assert!(prompt.contains("Proposed solution"), "the judge was asked to solve: {prompt}");
            "INCORRECT".to_owned()
        });
        let mut cx =
            Context { task: &task, generator: &mut solver, judge: Some(&mut judge), seed: 4, reporter: &NullReporter };
        let out = SelfPlay::new(config("judge-model = \"base\"")).collect(&mut cx).expect("collect");
        // Two solutions of each of the 6 problems, then one revision each: all wrong, all rejected.
        assert_eq!(tally(&out).true_negative, 12 + 6);
    }

    #[test]
    fn quality_selection_is_best_first_and_capped() {
        let mut records: Vec<SampleRecord> = ["a", "b", "c", " b "]
            .iter()
            .map(|t| {
                crate::records::judge_completions(
                    &flywheel_verify::Verifier::new(flywheel_verify::Format::Auto),
                    &task().train_problems()[0],
                    "q",
                    &[crate::strategy::testing::completion(t)],
                    false,
                )
                .remove(0)
            })
            .collect();
        for (r, q) in records.iter_mut().zip([0.5, 1.0, 0.75, 1.0]) {
            r.reward = q;
        }
        assert_eq!(select_by_quality(&records, 0.7, 5), [1, 2]);
        assert_eq!(select_by_quality(&records, 0.5, 5), [1, 2, 0]);
        assert_eq!(select_by_quality(&records, 0.5, 1), [1]);
        assert!(select_by_quality(&records, 1.1, 5).is_empty());
    }
}
