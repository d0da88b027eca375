//! How a conversation becomes model text, and which tokens of it are training targets.
//!
//! A [`PromptFormat`] renders chat messages into segments of text, each marked as target (an
//! assistant turn, which the loss covers) or context (everything else). The tiny character model
//! has no chat template: [`RawFormat`] simply concatenates the contents. A Jinja chat template for
//! SmolLM2 is another implementation of the same trait, so the trainer and sampler never change.
//!
//! The end-of-sequence token is appended by [`tokenize_example`] as a target: the model must learn
//! to stop, and the sampler stops at it.

use flywheel_core::{Message, Role, TrainExample};

use crate::error::{EngineError, Result};
use crate::text::tokenizer::TextTokenizer;

/// A piece of rendered text and whether the loss covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// `true` for assistant output the model is trained to produce.
    pub target: bool,
}

/// Renders chat messages into model text.
pub trait PromptFormat: Send + Sync + std::fmt::Debug {
    /// The whole conversation as segments; assistant turns are targets.
    fn render(&self, messages: &[Message]) -> Result<Vec<Segment>>;

    /// The text a generator is prompted with: the conversation so far, ending where the
    /// assistant's answer begins.
    fn render_prompt(&self, messages: &[Message]) -> Result<String>;
}

/// No template: the contents are concatenated as they are (system, user and assistant alike).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawFormat;

impl PromptFormat for RawFormat {
    fn render(&self, messages: &[Message]) -> Result<Vec<Segment>> {
        Ok(messages.iter().map(|m| Segment { text: m.content.clone(), target: m.role == Role::Assistant }).collect())
    }

    fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        Ok(messages.iter().map(|m| m.content.as_str()).collect())
    }
}

/// Token ids of one training example and the mask of the ones the loss covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// The token ids, end-of-sequence last.
    pub ids: Vec<u32>,
    /// `target[i]` is true when `ids[i]` is a training target (assistant text or the final EOS).
    pub target: Vec<bool>,
}

impl TokenizedExample {
    /// Target tokens the loss covers: every target but the first token, which nothing predicts.
    pub fn predicted_targets(&self) -> usize {
        self.target.iter().skip(1).filter(|&&t| t).count()
    }
}

/// Tokenizes `example` under `format`: every segment is encoded on its own (so the target mask
/// follows segment boundaries exactly), then `eos` is appended as a target.
pub fn tokenize_example(
    tokenizer: &TextTokenizer,
    format: &dyn PromptFormat,
    example: &TrainExample,
    eos: u32,
) -> Result<TokenizedExample> {
    let segments = format.render(&example.messages)?;
    if !segments.iter().any(|s| s.target) {
        return Err(EngineError::invalid("training example has no assistant message"));
    }
    let (mut ids, mut target) = (Vec::new(), Vec::new());
    for seg in &segments {
        let seg_ids = tokenizer.encode(&seg.text)?;
        target.extend(std::iter::repeat_n(seg.target, seg_ids.len()));
        ids.extend(seg_ids);
    }
    ids.push(eos);
    target.push(true);
    Ok(TokenizedExample { ids, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_mask_covers_exactly_completion_and_eos() {
        let tok = TextTokenizer::char_level("0123456789+=").unwrap();
        let eos = tok.token_id(crate::text::tokenizer::EOS_TOKEN).unwrap();
        let ex = TrainExample::single_turn("12+7=", "19");
        let t = tokenize_example(&tok, &RawFormat, &ex, eos).unwrap();
        assert_eq!(t.ids.len(), 5 + 2 + 1);
        assert_eq!(t.target, [false, false, false, false, false, true, true, true]);
        assert_eq!(tok.decode(&t.ids[5..7]).unwrap(), "19");
        assert_eq!(*t.ids.last().unwrap(), eos);
    }

    #[test]
    fn example_without_assistant_is_rejected() {
        let tok = TextTokenizer::char_level("ab").unwrap();
        let ex = TrainExample { messages: vec![Message { role: Role::User, content: "ab".into() }] };
        assert!(tokenize_example(&tok, &RawFormat, &ex, 2).is_err());
    }

    #[test]
    fn raw_prompt_is_the_concatenation() {
        let msgs = [
            Message { role: Role::System, content: "s:".into() },
            Message { role: Role::User, content: "1+1=".into() },
        ];
        assert_eq!(RawFormat.render_prompt(&msgs).unwrap(), "s:1+1=");
    }
}
