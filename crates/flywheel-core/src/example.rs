//! Problems posed by tasks and examples handed to trainers.

use serde::{Deserialize, Serialize};

/// One problem of a task: what the model is asked, and the gold answer it must reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable identifier, unique within a task split (for example `add-3-00017`).
    pub id: String,
    /// The question as shown to the model, without any answer hint.
    pub question: String,
    /// The gold final answer (a bare answer, such as `1134`).
    pub answer: String,
    /// A bucket for per-group metrics (digit length for addition); empty when the task has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bucket: String,
}

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system instruction.
    System,
    /// The user's turn: the problem.
    User,
    /// The model's turn: the rationale and answer.
    Assistant,
}

/// One chat message, in the Hugging Face `messages` shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// One supervised example: a conversation whose assistant turns are the training targets.
///
/// Serialises as `{"messages": [...]}`, the JSONL shape TRL and most SFT tools read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrainExample {
    /// The conversation; loss is taken on assistant turns only.
    pub messages: Vec<Message>,
}

impl TrainExample {
    /// A single-turn example: the user's prompt and the assistant's answer.
    pub fn single_turn(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Self {
            messages: vec![
                Message { role: Role::User, content: prompt.into() },
                Message { role: Role::Assistant, content: completion.into() },
            ],
        }
    }
}
