//! Arithmetic practice: more of the sums a model's own rationales ask of it, with exact results.
//!
//! A small model plans a word problem well before it adds well: SmolLM2-135M writes `72 - 38 = 42`
//! far more often than it picks the wrong operation, and the few hundred rationales STaR keeps in
//! an iteration hold too few sums to teach it subtraction. Practice takes the arithmetic the model
//! itself set out to do in this iteration's samples (every equation of every sample, kept or not),
//! reads the shape of each expression it wrote (`dd - dd`, `d * d + dd`: operators, parentheses and
//! the digit count of each number), draws fresh operands of the same digit counts and writes each
//! expression with its exact value, one equation per line:
//!
//! ```text
//! 81 - 47 = 34
//! 6 * 9 + 23 = 77
//! ```
//!
//! The results come from the verifier's arithmetic ([`flywheel_verify::arithmetic`]), as STaR's
//! rationalization takes the answer from the task: the model learns from sums it attempted, with the
//! checker supplying the results. Only whole, non-negative results are written (word problems
//! count things; a division is drawn again until it comes out exact), and only expressions of whole
//! numbers of at most [`MAX_DIGITS`] digits are practised. Each iteration's practice is drawn
//! afresh from its own samples' shapes, so it follows the arithmetic the model is writing now.

use flywheel_core::{Role, TrainExample};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The user turn of every practice example; practice examples are recognised by it.
pub const PRACTICE_PROMPT: &str = "Practice arithmetic: write out equations with their results.";

/// Longest number (in digits) of a practised expression.
pub const MAX_DIGITS: usize = 4;

/// Draws of fresh operands for one equation before its shape is skipped (a division that will not
/// come out exact, a subtraction that keeps going negative).
const MAX_DRAWS: usize = 32;

/// One piece of an expression's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Piece {
    /// A number of this many digits.
    Number(usize),
    /// Operators, parentheses and spaces, as written.
    Text(String),
}

/// The shape of an expression the model wrote: its numbers replaced by their digit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<Piece>);

impl Shape {
    /// The shape of `expression` when it is whole-number arithmetic with at least one operator
    /// and two numbers: digits, `+ - * / x × ÷`, parentheses and spaces only.
    pub fn of(expression: &str) -> Option<Shape> {
        let mut pieces: Vec<Piece> = Vec::new();
        let (mut numbers, mut operators) = (0, 0);
        let mut chars = expression.trim().chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                let mut digits = 1;
                while chars.next_if(char::is_ascii_digit).is_some() {
                    digits += 1;
                }
                if digits > MAX_DIGITS {
                    return None;
                }
                numbers += 1;
                pieces.push(Piece::Number(digits));
                continue;
            }
            match c {
                '+' | '-' | '*' | '/' | 'x' | '×' | '÷' => operators += 1,
                '(' | ')' | ' ' => {}
                _ => return None,
            }
            match pieces.last_mut() {
                Some(Piece::Text(text)) => text.push(c),
                _ => pieces.push(Piece::Text(c.to_string())),
            }
        }
        (numbers >= 2 && operators >= 1).then_some(Shape(pieces))
    }

    /// The shape filled with fresh operands drawn from `rng`, and its value, when the value is a
    /// whole number of at least 0 within [`MAX_DRAWS`] draws.
    pub fn draw(&self, rng: &mut StdRng) -> Option<(String, u64)> {
        for _ in 0..MAX_DRAWS {
            let mut expression = String::new();
            for piece in &self.0 {
                match piece {
                    Piece::Text(text) => expression.push_str(text),
                    Piece::Number(digits) => {
                        let low = if *digits == 1 { 2 } else { 10u64.pow(*digits as u32 - 1) };
                        expression.push_str(&rng.random_range(low..10u64.pow(*digits as u32)).to_string());
                    }
                }
            }
            let Some(value) = flywheel_verify::arithmetic::pending(&format!("{expression} =")) else {
                continue;
            };
            if (0.0..1e9).contains(&value) && value.fract() == 0.0 {
                return Some((expression, value as u64));
            }
        }
        None
    }
}

/// The shape of every expression written in `texts` (each side of each equation that has an
/// operator), once per time it was written: a shape the model writes often is practised often.
pub fn shapes<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<Shape> {
    let mut out = Vec::new();
    for text in texts {
        for equation in flywheel_verify::arithmetic::equations(text) {
            out.extend(equation.text.split('=').filter_map(Shape::of));
        }
    }
    out
}

/// `examples` practice examples of `per_example` equations each, their shapes drawn from `shapes`
/// (with repetition) by `seed`. Empty when there are no shapes.
pub fn examples(shapes: &[Shape], examples: usize, per_example: usize, seed: u64) -> Vec<TrainExample> {
    if shapes.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(examples);
    // A shape that never comes out whole (a division of two odd digits, say) gives no line;
    // bounding the attempts keeps a set of only such shapes from looping forever.
    let mut attempts = examples * per_example * 4;
    while out.len() < examples && attempts > 0 {
        let mut lines = Vec::with_capacity(per_example);
        while lines.len() < per_example && attempts > 0 {
            attempts -= 1;
            let shape = &shapes[rng.random_range(0..shapes.len())];
            if let Some((expression, value)) = shape.draw(&mut rng) {
                lines.push(format!("{expression} = {value}"));
            }
        }
        if lines.len() == per_example {
            out.push(TrainExample::single_turn(PRACTICE_PROMPT, lines.join("\n")));
        }
    }
    out
}

/// Whether `example` is a practice example (carried-over data leaves them out: each iteration
/// draws its own).
pub fn is_practice(example: &TrainExample) -> bool {
    example.messages.iter().any(|m| m.role == Role::User && m.content == PRACTICE_PROMPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_keeps_operators_and_digit_counts_and_refuses_words_and_decimals() {
        let shape = Shape::of("72 - 8").unwrap();
        assert_eq!(shape.0, vec![Piece::Number(2), Piece::Text(" - ".into()), Piece::Number(1)]);
        let nested = Shape::of("(12 + 3) x 4").unwrap();
        assert_eq!(nested.0.len(), 6, "{nested:?}");
        for not_arithmetic in ["72", "7.5 * 2", "$4 + 5", "1,200 + 3", "Day 1 + 2", "12345 + 1", ""] {
            assert_eq!(Shape::of(not_arithmetic), None, "{not_arithmetic:?}");
        }
    }

    #[test]
    fn shapes_are_read_from_every_side_with_an_operator() {
        let text = "Kai keeps 84 - 29 = 55 stamps.\nThen 86 - 5 * 9 = 86 - 45 = 41.\nThe answer is 41.";
        let found = shapes([text]);
        assert_eq!(
            found,
            vec![Shape::of("84 - 29").unwrap(), Shape::of("86 - 5 * 9").unwrap(), Shape::of("86 - 45").unwrap()]
        );
        assert!(shapes(["No sums here, the answer is 4."]).is_empty());
    }

    #[test]
    fn drawn_equations_have_the_shape_and_the_exact_whole_value() {
        let mut rng = StdRng::seed_from_u64(3);
        for written in ["84 - 29", "56 / 8", "6 * 9 + 23", "(12 + 3) x 4", "130 - 93 - 7"] {
            let shape = Shape::of(written).unwrap();
            for _ in 0..200 {
                let (expression, value) = shape.draw(&mut rng).expect("these shapes come out whole");
                assert_eq!(Shape::of(&expression).as_ref(), Some(&shape), "{expression}");
                let numbers: Vec<i64> = expression
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                let exact = match written {
                    "84 - 29" => numbers[0] - numbers[1],
                    "56 / 8" => {
                        assert_eq!(numbers[0] % numbers[1], 0, "{expression}");
                        numbers[0] / numbers[1]
                    }
                    "6 * 9 + 23" => numbers[0] * numbers[1] + numbers[2],
                    "(12 + 3) x 4" => (numbers[0] + numbers[1]) * numbers[2],
                    _ => numbers[0] - numbers[1] - numbers[2],
                };
                assert_eq!(exact, value as i64, "{expression} = {value}");
            }
        }
    }

    #[test]
    fn examples_hold_the_asked_number_of_lines_and_follow_the_seed() {
        let found = shapes(["9 * 7 = 63 melons, 63 - 20 = 43 left, 56 / 8 = 7 each."]);
        let set = examples(&found, 5, 12, 7);
        assert_eq!(set.len(), 5);
        for example in &set {
            assert!(is_practice(example));
            let answer = &example.messages[1].content;
            assert_eq!(answer.lines().count(), 12, "{answer}");
            for line in answer.lines() {
                let equation = &flywheel_verify::arithmetic::equations(line)[0];
                assert!(equation.holds(), "{line}");
            }
        }
        assert_eq!(set, examples(&found, 5, 12, 7));
        assert_ne!(set, examples(&found, 5, 12, 8));
        assert!(examples(&[], 5, 12, 7).is_empty());
        assert!(!is_practice(&TrainExample::single_turn("What is 2 + 2?", "4")));
    }

    #[test]
    fn a_shape_that_never_comes_out_whole_gives_no_examples_and_ends() {
        // One digit minus two digits is always negative.
        let found = vec![Shape::of("7 - 10").unwrap()];
        assert!(examples(&found, 3, 4, 1).is_empty());
    }
}
