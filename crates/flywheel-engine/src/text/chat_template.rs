//! A model's own chat template (Jinja), rendered with minijinja the way `transformers` renders it.
//!
//! The template comes from the model: GGUF's `tokenizer.chat_template` or the `chat_template` of a
//! Hugging Face `tokenizer_config.json`; nothing here hard-codes a model's format. The environment
//! matches `transformers`' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, Python string
//! methods (`.strip()`, `.startswith()`, …) available, `raise_exception(msg)` defined, and the
//! variables `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
//!
//! For training, [`ChatTemplate`] splits a conversation into context and target text without any
//! knowledge of the format: the text before an assistant turn is the template rendered up to that
//! turn with the generation prompt, and the turn's target is what the full rendering adds from
//! there up to the end of the message content (plus the end-of-turn token when it follows). A
//! template that does not render incrementally (later turns rewrite earlier text) is an error.

use flywheel_core::{Message, Role};
use minijinja::{context, Environment, Error, ErrorKind};

use crate::error::{EngineError, Result};
use crate::text::template::{PromptFormat, Segment};

const NAME: &str = "chat_template";

/// A Jinja chat template with the special tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).field("eos_token", &self.eos_token).finish()
    }
}

fn template_err(e: Error) -> EngineError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    EngineError::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template may insert.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source.to_owned()).map_err(template_err)?;
        Ok(Self { env, source: source.to_owned(), bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`, ending with the assistant's header when `add_generation_prompt`.
    pub fn apply(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(template_err)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(template_err)
    }
}

impl PromptFormat for ChatTemplate {
    fn render(&self, messages: &[Message]) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        let mut done = String::new();
        let not_incremental =
            |i: usize| EngineError::Template(format!("the template does not render message {i} incrementally"));
        for (i, message) in messages.iter().enumerate() {
            if message.role != Role::Assistant {
                continue;
            }
            let prefix = self.apply(&messages[..i], true)?;
            let full = self.apply(&messages[..=i], false)?;
            if !prefix.starts_with(&done) || !full.starts_with(&prefix) {
                return Err(not_incremental(i));
            }
            push(&mut segments, &prefix[done.len()..], false);
            let turn = &full[prefix.len()..];
            let start = turn.find(message.content.as_str()).ok_or_else(|| not_incremental(i))?;
            let end = start + message.content.len();
            if i + 1 == messages.len() {
                // The last turn ends with its content: the trainer appends the end-of-sequence id.
                push(&mut segments, &turn[..end], true);
                return Ok(segments);
            }
            let end = if turn[end..].starts_with(&self.eos_token) { end + self.eos_token.len() } else { end };
            push(&mut segments, &turn[..end], true);
            push(&mut segments, &turn[end..], false);
            done = full;
        }
        let all = self.apply(messages, false)?;
        let rest = all.strip_prefix(done.as_str()).ok_or_else(|| not_incremental(messages.len()))?;
        push(&mut segments, rest, false);
        Ok(segments)
    }

    fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        self.apply(messages, true)
    }
}

fn push(segments: &mut Vec<Segment>, text: &str, target: bool) {
    if !text.is_empty() {
        segments.push(Segment { text: text.to_owned(), target });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF file and `tokenizer_config.json` carry it.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msg(role: Role, content: &str) -> Message {
        Message { role, content: content.into() }
    }

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let prompt = t.render_prompt(&[msg(Role::User, "What is 7 times 8?")]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 7 times 8?<|im_end|>\n<|im_start|>assistant\n"
        );
        let own = t.render_prompt(&[msg(Role::System, "Be brief."), msg(Role::User, "Hi")]).unwrap();
        assert_eq!(
            own,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn targets_are_exactly_the_assistant_contents() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let msgs =
            [msg(Role::User, "a?"), msg(Role::Assistant, "A1"), msg(Role::User, "b?"), msg(Role::Assistant, "B2")];
        let segs = t.render(&msgs).unwrap();
        let targets: Vec<&str> = segs.iter().filter(|s| s.target).map(|s| s.text.as_str()).collect();
        assert_eq!(targets, ["A1<|im_end|>", "B2"]);
        let joined: String = segs.iter().map(|s| s.text.as_str()).collect();
        // The whole rendering minus the final end-of-turn (the trainer appends EOS there).
        let full = t.apply(&msgs, false).unwrap();
        assert_eq!(format!("{joined}<|im_end|>\n"), full);
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t.render_prompt(&[msg(Role::User, "x")]).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn python_string_methods_and_block_trimming_work() {
        // trim_blocks drops the newline after `{% for %}`, lstrip_blocks the indent before `{% endfor %}`.
        let src = "{% for m in messages %}\n{{ m['content'].strip() }}|\n  {% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render_prompt(&[msg(Role::User, "  hi  ")]).unwrap(), "hi|\n");
    }
}
