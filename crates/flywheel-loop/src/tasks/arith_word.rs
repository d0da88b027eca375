//! One- and two-step arithmetic word problems, for a small pretrained chat model to improve on.
//!
//! A model such as SmolLM2-135M-Instruct solves some grade-school word problems and misses many:
//! the room STaR needs to learn from its own correct rationales. Problems come from [`TEMPLATES`],
//! short stories (shopping, saving, baking, reading, travel, sharing, ...) whose names and objects
//! vary, over one operation (bucket `1-step`: addition, subtraction, multiplication, exact division)
//! or two (bucket `2-step`: "buys 4 packs of 6 stickers, then gives 5 away"). Results are never
//! negative and never below 2 (no "1 apples"); factors, divisors and quotients stay within 2 to 12,
//! and other operands within 2 to `max-operand`, so every answer stays under 1000.
//!
//! A problem is posed as its question, then the instruction on the next line; its rationalization
//! prompt adds a line with the answer as a hint. The task has no seed set to train on: iteration 0
//! evaluates the model as it comes. It has four worked examples ([`WORKED_EXAMPLES`]) that STaR's
//! `few-shot` sampling shows before each question, as the paper's prompt set; they are never
//! trained on and never shown at evaluation.
//!
//! The held-out split is drawn first, from its own seed, so it does not change with the number of
//! training problems. A training problem never repeats a held-out one: neither its question nor its
//! story and numbers (the same story told with another name would be the same problem reworded).
//!
//! With `held-out-stories = n`, `n` stories of each bucket are never trained on: a second held-out
//! split of `eval-problems` problems is told with them only (buckets `new-story 1-step` and
//! `new-story 2-step`), so that a gain on new phrasings (arithmetic) can be told from a gain on
//! familiar ones (recall). The first held-out split and the training split use the other stories.

use std::collections::HashSet;

use flywheel_core::Problem;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::ChatProblems;
use crate::config::ArithWordConfig;
use crate::{seeds, LoopError};

/// Largest factor, divisor and quotient of any problem.
const FACTOR_MAX: u64 = 12;

/// Most stories of each bucket `held-out-stories` may withhold: every bucket keeps at least one to
/// train on (the 2-step bucket has the fewest stories).
pub const MAX_HELD_OUT_STORIES: usize = 21;

/// Failed draws in a row after which a split is declared impossible (too few distinct problems).
const MAX_FAILED_DRAWS: usize = 20_000;

/// The arithmetic of a template over its numbers `a`, `b` and `c`, in the order the story tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shape {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b, exact
    Div,
    /// a + b + c
    AddAdd,
    /// a + b - c
    AddSub,
    /// a - b - c
    SubSub,
    /// a * b + c
    MulAdd,
    /// a * b - c
    MulSub,
    /// a - b * c
    SubMul,
    /// (a + b) * c
    AddMul,
    /// a / b + c, the division exact
    DivAdd,
    /// (a - b) / c, the division exact
    SubDiv,
}

impl Shape {
    /// Operations from the numbers to the answer: the bucket.
    fn steps(self) -> usize {
        match self {
            Shape::Add | Shape::Sub | Shape::Mul | Shape::Div => 1,
            _ => 2,
        }
    }

    /// Numbers `a, b, c` drawn so that the answer is a whole number of at least 2; `max` bounds the
    /// operands that are neither factors nor divisors. Unused numbers are 0.
    fn draw(self, rng: &mut StdRng, max: u64) -> [u64; 3] {
        const F: u64 = FACTOR_MAX;
        let mut r = |lo: u64, hi: u64| rng.random_range(lo..=hi);
        match self {
            Shape::Add => [r(2, max), r(2, max), 0],
            Shape::Sub => {
                let a = r(4, max);
                [a, r(2, a - 2), 0]
            }
            Shape::Mul => [r(2, F), r(2, F), 0],
            Shape::Div => {
                let (quotient, divisor) = (r(2, F), r(2, F));
                [quotient * divisor, divisor, 0]
            }
            Shape::AddAdd => [r(2, max), r(2, max), r(2, max)],
            Shape::AddSub => {
                let (a, b) = (r(2, max), r(2, max));
                [a, b, r(2, max.min(a + b - 2))]
            }
            Shape::SubSub => {
                let a = r(6, max);
                let b = r(2, a - 4);
                [a, b, r(2, a - b - 2)]
            }
            Shape::MulAdd => [r(2, F), r(2, F), r(2, max)],
            Shape::MulSub => {
                let (a, b) = (r(2, F), r(2, F));
                [a, b, r(2, a * b - 2)]
            }
            Shape::SubMul => {
                let (b, c) = (r(2, F), r(2, F));
                [b * c + r(2, max), b, c]
            }
            Shape::AddMul => [r(2, F), r(2, F), r(2, F)],
            Shape::DivAdd => {
                let (quotient, divisor) = (r(2, F), r(2, F));
                [quotient * divisor, divisor, r(2, max)]
            }
            Shape::SubDiv => {
                let (quotient, c) = (r(2, F), r(2, F));
                let b = r(2, max.min(quotient * c));
                [quotient * c + b, b, c]
            }
        }
    }

    /// A worked solution over `numbers`, one operation per line, then the answer sentence: the
    /// task's reference solution (its natural data).
    fn solution(self, numbers: [u64; 3]) -> String {
        let [a, b, c] = numbers;
        let r = self.answer(numbers);
        let steps = match self {
            Shape::Add => format!("{a} + {b} = {r}."),
            Shape::Sub => format!("{a} - {b} = {r}."),
            Shape::Mul => format!("{a} * {b} = {r}."),
            Shape::Div => format!("{a} / {b} = {r}."),
            Shape::AddAdd => format!("{a} + {b} = {}.\n{} + {c} = {r}.", a + b, a + b),
            Shape::AddSub => format!("{a} + {b} = {}.\n{} - {c} = {r}.", a + b, a + b),
            Shape::SubSub => format!("{a} - {b} = {}.\n{} - {c} = {r}.", a - b, a - b),
            Shape::MulAdd => format!("{a} * {b} = {}.\n{} + {c} = {r}.", a * b, a * b),
            Shape::MulSub => format!("{a} * {b} = {}.\n{} - {c} = {r}.", a * b, a * b),
            Shape::SubMul => format!("{b} * {c} = {}.\n{a} - {} = {r}.", b * c, b * c),
            Shape::AddMul => format!("{a} + {b} = {}.\n{} * {c} = {r}.", a + b, a + b),
            Shape::DivAdd => format!("{a} / {b} = {}.\n{} + {c} = {r}.", a / b, a / b),
            Shape::SubDiv => format!("{a} - {b} = {}.\n{} / {c} = {r}.", a - b, a - b),
        };
        format!("{steps}\nThe answer is {r}.")
    }

    /// The answer over numbers drawn by [`Shape::draw`].
    fn answer(self, [a, b, c]: [u64; 3]) -> u64 {
        match self {
            Shape::Add => a + b,
            Shape::Sub => a - b,
            Shape::Mul => a * b,
            Shape::Div => a / b,
            Shape::AddAdd => a + b + c,
            Shape::AddSub => a + b - c,
            Shape::SubSub => a - b - c,
            Shape::MulAdd => a * b + c,
            Shape::MulSub => a * b - c,
            Shape::SubMul => a - b * c,
            Shape::AddMul => (a + b) * c,
            Shape::DivAdd => a / b + c,
            Shape::SubDiv => (a - b) / c,
        }
    }
}

/// A story over numbers: `{a}`, `{b}`, `{c}` in that order, `{name}` and `{item}` filled at random.
struct Template {
    shape: Shape,
    text: &'static str,
    items: &'static [&'static str],
}

const NONE: &[&str] = &[""];
const FRUIT: &[&str] = &["apples", "oranges", "lemons", "pears", "peaches"];
const SMALL_THINGS: &[&str] = &["stickers", "marbles", "candies", "crayons", "cards"];
const BAKED: &[&str] = &["cookies", "muffins", "rolls", "cupcakes"];
const PURCHASES: &[&str] = &["book", "toy", "shirt", "lamp", "board game"];

/// The stories; each keeps its numbers in the order `a`, `b`, `c` and holds no other digit.
const TEMPLATES: &[Template] = &[
    Template {
        shape: Shape::Add,
        text: "{name} buys {a} {item} at the market in the morning and {b} more in the afternoon. \
               How many {item} does {name} buy in all?",
        items: FRUIT,
    },
    Template {
        shape: Shape::Add,
        text: "{name} saves {a} dollars in March and {b} dollars in April. \
               How many dollars does {name} save in the two months?",
        items: NONE,
    },
    Template {
        shape: Shape::Add,
        text: "{name}'s team scores {a} points in the first game and {b} points in the second game. \
               How many points does the team score in both games?",
        items: NONE,
    },
    Template {
        shape: Shape::Add,
        text: "{name} rides a {item} for {a} kilometers on Saturday and {b} kilometers on Sunday. \
               How many kilometers does {name} ride over the weekend?",
        items: &["bike", "horse", "scooter"],
    },
    Template {
        shape: Shape::Sub,
        text: "{name}'s book has {a} pages. {name} has already read {b} pages. How many pages are left to read?",
        items: NONE,
    },
    Template {
        shape: Shape::Sub,
        text: "There are {a} {item} in {name}'s garden. {name} picks {b} of them. \
               How many {item} are still in the garden?",
        items: &["roses", "tulips", "daisies", "sunflowers"],
    },
    Template {
        shape: Shape::Sub,
        text: "{name} has {a} dollars and spends {b} dollars on a {item}. How many dollars does {name} have left?",
        items: PURCHASES,
    },
    Template {
        shape: Shape::Sub,
        text: "{name} drives a bus that carries {a} passengers. At the first stop, {b} passengers get off \
               and nobody gets on. How many passengers are on the bus now?",
        items: NONE,
    },
    Template {
        shape: Shape::Mul,
        text: "{name} bakes {a} trays of {item}. Each tray holds {b} {item}. How many {item} does {name} bake?",
        items: BAKED,
    },
    Template {
        shape: Shape::Mul,
        text: "{name} sets up {a} rows of chairs for a concert, with {b} chairs in each row. \
               How many chairs does {name} set up?",
        items: NONE,
    },
    Template {
        shape: Shape::Mul,
        text: "{name} reads {a} pages every day for {b} days. How many pages does {name} read in those days?",
        items: NONE,
    },
    Template {
        shape: Shape::Div,
        text: "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
        items: SMALL_THINGS,
    },
    Template {
        shape: Shape::Div,
        text: "{name} packs {a} {item} into boxes, with {b} {item} in each box. How many boxes does {name} fill?",
        items: &["eggs", "oranges", "cookies", "books"],
    },
    Template {
        shape: Shape::Div,
        text: "Coach {name} splits {a} players into {b} teams of the same size. How many players are on each team?",
        items: NONE,
    },
    Template {
        shape: Shape::MulSub,
        text: "{name} buys {a} packs of {item}, and each pack has {b} {item}. Then {name} gives {c} {item} \
               to a friend. How many {item} does {name} have left?",
        items: &["stickers", "pencils", "balloons", "cards"],
    },
    Template {
        shape: Shape::MulAdd,
        text: "{name} bakes {a} trays of {item} with {b} {item} on each tray. A neighbor brings {c} more {item}. \
               How many {item} does {name} have now?",
        items: BAKED,
    },
    Template {
        shape: Shape::AddSub,
        text: "{name} has {a} dollars and earns {b} dollars doing chores. Then {name} spends {c} dollars on a \
               {item}. How many dollars does {name} have now?",
        items: PURCHASES,
    },
    Template {
        shape: Shape::AddSub,
        text: "{name} drives a bus with {a} passengers. At the first stop, {b} people get on and then {c} people \
               get off. How many passengers are on the bus now?",
        items: NONE,
    },
    Template {
        shape: Shape::SubSub,
        text: "{name}'s book has {a} pages. {name} reads {b} pages on Monday and {c} pages on Tuesday. \
               How many pages are left to read?",
        items: NONE,
    },
    Template {
        shape: Shape::AddAdd,
        text: "{name} drives {a} kilometers on Friday, {b} kilometers on Saturday and {c} kilometers on Sunday. \
               How many kilometers does {name} drive in the three days?",
        items: NONE,
    },
    Template {
        shape: Shape::AddMul,
        text: "Each basket at {name}'s stall holds {a} apples and {b} pears. {name} has {c} baskets. \
               How many pieces of fruit are in the baskets?",
        items: NONE,
    },
    Template {
        shape: Shape::DivAdd,
        text: "{name} shares {a} {item} equally among {b} friends. Each friend already had {c} {item}. \
               How many {item} does each friend have now?",
        items: SMALL_THINGS,
    },
    Template {
        shape: Shape::SubDiv,
        text: "{name} bakes {a} {item} and eats {b} of them. {name} puts the rest into {c} boxes, the same \
               number in each box. How many {item} are in each box?",
        items: BAKED,
    },
    Template {
        shape: Shape::SubMul,
        text: "{name} has {a} dollars and buys {b} {item} that cost {c} dollars each. \
               How many dollars does {name} have left?",
        items: &["notebooks", "pens", "tickets", "mugs"],
    },
    Template {
        shape: Shape::Add,
        text: "A library gets {a} new books on Monday and {b} new books on Friday. \
               How many new books does the library get that week?",
        items: NONE,
    },
    Template {
        shape: Shape::Add,
        text: "If {name} has {a} {item} and finds {b} more, how many {item} does {name} have altogether?",
        items: SMALL_THINGS,
    },
    Template {
        shape: Shape::Add,
        text: "How many birds are there in total if {a} birds sit on the roof and {b} birds sit on the fence?",
        items: NONE,
    },
    Template {
        shape: Shape::Add,
        text: "The school orchestra has {a} violin players and {b} other players. \
               How many players are in the orchestra?",
        items: NONE,
    },
    Template {
        shape: Shape::Sub,
        text: "A parking lot has room for {a} cars. Right now {b} cars are parked there. \
               How many more cars can park in the lot?",
        items: NONE,
    },
    Template {
        shape: Shape::Sub,
        text:
            "{name} needs {a} points to win a prize and has {b} points so far. How many more points does {name} need?",
        items: NONE,
    },
    Template {
        shape: Shape::Sub,
        text: "Out of the {a} students in the hall, {b} are wearing hats. How many students are not wearing hats?",
        items: NONE,
    },
    Template {
        shape: Shape::Mul,
        text: "A train has {a} cars, and every car seats {b} people. How many people can the train seat?",
        items: NONE,
    },
    Template {
        shape: Shape::Mul,
        text: "{name} earns {a} dollars an hour and works for {b} hours. How many dollars does {name} earn?",
        items: NONE,
    },
    Template {
        shape: Shape::Mul,
        text: "A box of {item} has {a} rows with {b} {item} in every row. How many {item} are in the box?",
        items: &["chocolates", "eggs", "buttons", "tiles"],
    },
    Template {
        shape: Shape::Div,
        text: "A rope that is {a} meters long is cut into {b} pieces of equal length. \
               How many meters long is each piece?",
        items: NONE,
    },
    Template {
        shape: Shape::Div,
        text: "{name} pays {a} dollars for {b} {item}, all at the same price. How many dollars does one cost?",
        items: &["tickets", "notebooks", "plants", "scarves"],
    },
    Template {
        shape: Shape::Div,
        text: "A bus travels {a} kilometers in {b} hours, going the same distance every hour. \
               How many kilometers does it travel in one hour?",
        items: NONE,
    },
    Template {
        shape: Shape::AddAdd,
        text: "A farm stand sells {a} melons in the morning, {b} melons at noon and {c} melons in the evening. \
               How many melons does the stand sell that day?",
        items: NONE,
    },
    Template {
        shape: Shape::AddSub,
        text: "There are {a} {item} in a jar. {name} adds {b} more, and later {c} of them are eaten. \
               How many {item} are in the jar now?",
        items: &["candies", "cookies", "nuts"],
    },
    Template {
        shape: Shape::AddSub,
        text: "The town library owns {a} books. It buys {b} new books and gives away {c} old ones. \
               How many books does the library own now?",
        items: NONE,
    },
    Template {
        shape: Shape::SubSub,
        text: "{name} starts the day with {a} dollars, pays {b} dollars for lunch and {c} dollars for a movie. \
               How many dollars does {name} have at the end of the day?",
        items: NONE,
    },
    Template {
        shape: Shape::SubSub,
        text: "A water tank holds {a} liters. {b} liters are used for cooking and {c} liters for cleaning. \
               How many liters remain in the tank?",
        items: NONE,
    },
    Template {
        shape: Shape::MulAdd,
        text: "A theater has {a} rows with {b} seats in each row, plus {c} seats on the balcony. \
               How many seats does the theater have?",
        items: NONE,
    },
    Template {
        shape: Shape::MulAdd,
        text: "{name} walks {a} kilometers a day for {b} days, and then walks {c} kilometers on a hike. \
               How many kilometers does {name} walk in all?",
        items: NONE,
    },
    Template {
        shape: Shape::MulSub,
        text: "A class orders {a} boxes of pencils with {b} pencils in each box. The students use {c} pencils \
               in the first week. How many pencils are left?",
        items: NONE,
    },
    Template {
        shape: Shape::SubMul,
        text: "A baker has {a} eggs and uses {b} eggs for each cake. After baking {c} cakes, how many eggs \
               does the baker have left?",
        items: NONE,
    },
    Template {
        shape: Shape::AddMul,
        text: "{name} plants {a} red tulips and {b} yellow tulips in each of {c} flower beds. \
               How many tulips does {name} plant?",
        items: NONE,
    },
    Template {
        shape: Shape::DivAdd,
        text: "A class of {a} students is split into {b} equal groups. Later, {c} new students join each group. \
               How many students are in each group now?",
        items: NONE,
    },
    Template {
        shape: Shape::SubDiv,
        text: "{name} has {a} dollars, spends {b} dollars on a {item}, and splits the rest equally among {c} jars. \
               How many dollars go into each jar?",
        items: PURCHASES,
    },
];

/// Worked examples for few-shot sampling (STaR's prompt set): stories told by none of
/// [`TEMPLATES`], so no problem of either split is among them, each solved one operation per line
/// and ending with the answer sentence the verifier reads.
const WORKED_EXAMPLES: &[(&str, &str)] = &[
    (
        "Rosa collects 27 shells on Monday and 45 shells on Tuesday. How many shells does Rosa collect?",
        "Rosa collects 27 + 45 = 72 shells.\nThe answer is 72.",
    ),
    (
        "A farmer has 9 crates with 7 melons in each crate. He sells 20 melons. How many melons are left?",
        "The crates hold 9 * 7 = 63 melons.\nAfter selling, 63 - 20 = 43 melons are left.\nThe answer is 43.",
    ),
    (
        "Kai has 84 stamps and gives 29 of them to his sister. How many stamps does Kai keep?",
        "Kai keeps 84 - 29 = 55 stamps.\nThe answer is 55.",
    ),
    (
        "A teacher hands out 56 pencils equally to 8 students, and each student already had 3 pencils. \
         How many pencils does each student have?",
        "Each student gets 56 / 8 = 7 pencils.\nWith the pencils they had, 7 + 3 = 10 pencils.\nThe answer is 10.",
    ),
];

const NAMES: &[&str] = &[
    "Mia", "Noah", "Ava", "Liam", "Emma", "Lucas", "Sofia", "Omar", "Priya", "Kenji", "Amara", "Diego", "Lena", "Tom",
    "Zara", "Ben", "Aisha", "Ivan", "Chloe", "Mateo", "Nora", "Yuki", "Sam", "Ella",
];

/// What makes two problems the same, whatever their wording: the story and its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    template: usize,
    numbers: [u64; 3],
}

/// A drawn problem and what it was drawn from.
#[derive(Debug, Clone)]
struct Drawn {
    key: Key,
    problem: Problem,
}

impl ChatProblems {
    /// The arithmetic word problem task: draws the held-out split, then the training split, for
    /// `config`. Fails when either split asks for more distinct problems than the templates give
    /// (only with a small `max-operand`).
    pub fn arith_word(config: &ArithWordConfig, seed: u64) -> Result<Self, LoopError> {
        let (eval, train) = generate(config, seed)?;
        let references = |drawn: &[Drawn]| {
            drawn
                .iter()
                .map(|d| (d.problem.id.clone(), TEMPLATES[d.key.template].shape.solution(d.key.numbers)))
                .collect()
        };
        let (train_references, heldout_references) = (references(&train), references(&eval));
        let problems = |drawn: Vec<Drawn>| drawn.into_iter().map(|d| d.problem).collect();
        let task =
            Self::new(problems(train), problems(eval), config.instruction.as_ref(), config.last_number_fallback, 0);
        Ok(task.with_worked_examples(WORKED_EXAMPLES).with_references(train_references, heldout_references))
    }
}

/// The held-out split (from its own seed; with withheld stories, followed by the new-story split)
/// and the training split that excludes it.
fn generate(config: &ArithWordConfig, seed: u64) -> Result<(Vec<Drawn>, Vec<Drawn>), LoopError> {
    let withheld = withheld_stories(config.held_out_stories, seed);
    let familiar = |t: usize| !withheld.contains(&t);
    let mut rng = StdRng::seed_from_u64(seeds::derive(seed, "arith-word-eval", 0));
    let none = (&HashSet::new(), &HashSet::new());
    let mut eval = draw_split(&mut rng, config, Split::Eval, config.eval_problems, &familiar, none)?;
    if !withheld.is_empty() {
        let mut rng = StdRng::seed_from_u64(seeds::derive(seed, "arith-word-new-stories", 0));
        let new = |t: usize| withheld.contains(&t);
        eval.extend(draw_split(&mut rng, config, Split::NewStories, config.eval_problems, &new, none)?);
    }
    let keys: HashSet<Key> = eval.iter().map(|d| d.key).collect();
    let questions: HashSet<&str> = eval.iter().map(|d| d.problem.question.as_str()).collect();
    let mut rng = StdRng::seed_from_u64(seeds::derive(seed, "arith-word-train", 0));
    let train = draw_split(&mut rng, config, Split::Train, config.train_problems, &familiar, (&keys, &questions))?;
    Ok((eval, train))
}

/// `count` stories of each bucket, drawn with `seed`, never to be trained on.
fn withheld_stories(count: usize, seed: u64) -> HashSet<usize> {
    if count == 0 {
        return HashSet::new();
    }
    let mut rng = StdRng::seed_from_u64(seeds::derive(seed, "arith-word-stories", 0));
    let mut withheld = HashSet::new();
    for steps in [1, 2] {
        let mut bucket: Vec<usize> = (0..TEMPLATES.len()).filter(|&t| TEMPLATES[t].shape.steps() == steps).collect();
        bucket.shuffle(&mut rng);
        withheld.extend(bucket.into_iter().take(count));
    }
    withheld
}

/// Which split a problem is drawn for: it names the problem's id and bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Training problems.
    Train,
    /// Held-out problems told with the stories trained on.
    Eval,
    /// Held-out problems told with stories never trained on.
    NewStories,
}

impl Split {
    fn id_prefix(self) -> &'static str {
        match self {
            Split::Train => "aw-train",
            Split::Eval => "aw-eval",
            Split::NewStories => "aw-eval-new",
        }
    }

    fn bucket(self, steps: usize) -> String {
        match self {
            Split::NewStories => format!("new-story {steps}-step"),
            _ => format!("{steps}-step"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
            Split::NewStories => "new-story eval",
        }
    }
}

/// `count` distinct problems told with the stories `allowed` accepts, `two-step-fraction` of them
/// (rounded) two-step, none of the `excluded` keys or questions, shuffled.
fn draw_split(
    rng: &mut StdRng,
    config: &ArithWordConfig,
    split: Split,
    count: usize,
    allowed: &dyn Fn(usize) -> bool,
    (excluded_keys, excluded_questions): (&HashSet<Key>, &HashSet<&str>),
) -> Result<Vec<Drawn>, LoopError> {
    let two_step = ((count as f64 * config.two_step_fraction).round() as usize).min(count);
    let mut keys = HashSet::new();
    let mut questions = HashSet::new();
    let mut drawn: Vec<(Key, String, u64)> = Vec::with_capacity(count);
    for (steps, wanted) in [(1, count - two_step), (2, two_step)] {
        let templates: Vec<usize> =
            (0..TEMPLATES.len()).filter(|&t| TEMPLATES[t].shape.steps() == steps && allowed(t)).collect();
        let (mut got, mut failed) = (0, 0);
        while got < wanted {
            let template = templates[rng.random_range(0..templates.len())];
            let Template { shape, text, items } = &TEMPLATES[template];
            let numbers = shape.draw(rng, config.max_operand);
            let key = Key { template, numbers };
            let question = render(text, NAMES[rng.random_range(0..NAMES.len())], items, rng, numbers);
            let fresh = !excluded_keys.contains(&key) && !excluded_questions.contains(question.as_str());
            if fresh && !keys.contains(&key) && !questions.contains(&question) {
                keys.insert(key);
                questions.insert(question.clone());
                drawn.push((key, question, shape.answer(numbers)));
                (got, failed) = (got + 1, 0);
            } else if failed == MAX_FAILED_DRAWS {
                return Err(LoopError::Task {
                    task: "arith-word",
                    message: format!(
                        "found only {got} distinct {steps}-step {} problems of the {wanted} asked for \
                         (max-operand = {}); ask for fewer or raise max-operand",
                        split.name(),
                        config.max_operand
                    ),
                });
            } else {
                failed += 1;
            }
        }
    }
    drawn.shuffle(rng);
    Ok(drawn
        .into_iter()
        .enumerate()
        .map(|(i, (key, question, answer))| Drawn {
            key,
            problem: Problem {
                id: format!("{}-{i:05}", split.id_prefix()),
                question,
                answer: answer.to_string(),
                bucket: split.bucket(TEMPLATES[key.template].shape.steps()),
            },
        })
        .collect())
}

/// The story `text` told with `name`, an item drawn from `items`, and `numbers`.
fn render(text: &str, name: &str, items: &[&str], rng: &mut StdRng, [a, b, c]: [u64; 3]) -> String {
    let item = items[rng.random_range(0..items.len())];
    text.replace("{name}", name)
        .replace("{item}", item)
        .replace("{a}", &a.to_string())
        .replace("{b}", &b.to_string())
        .replace("{c}", &c.to_string())
}

#[cfg(test)]
mod tests;
