//! Text: tokenizers (`tokenizer.json` or a character alphabet), chat templates (Jinja, as
//! Hugging Face renders them) and the tokenized training example with its target mask.

pub(crate) mod chat_template;
pub(crate) mod template;
pub(crate) mod tokenizer;
