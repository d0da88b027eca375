//! Where in a config file a mistake inside a `type`-tagged table lies.
//!
//! `[task]`, `[model]`, `[strategy]`, `[generator]` and `[trainer]` are enums tagged by their `type` key. serde reads such a
//! table whole before it knows the variant, so a mistake inside it (a string where a number
//! belongs, say) is reported at the table's header, without the key. [`locate`] reads each tagged
//! table again as its variant's plain struct, from the same text with the `type` line blanked
//! (line numbers unchanged), which reports the line and the key.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{
    AdditionConfig, ArithWordConfig, CommandTrainerConfig, EmbeddedModelConfig, JsonlConfig, OpenAiGeneratorConfig,
    PretrainedModelConfig, RestConfig, RestEmConfig, SelfPlayConfig, StarConfig,
};

#[derive(Deserialize)]
struct Task<T> {
    #[allow(dead_code)]
    task: T,
}

#[derive(Deserialize)]
struct Model<T> {
    #[allow(dead_code)]
    model: T,
}

#[derive(Deserialize)]
struct Strategy<T> {
    #[allow(dead_code)]
    strategy: T,
}

#[derive(Deserialize)]
struct Generator<T> {
    #[allow(dead_code)]
    generator: T,
}

#[derive(Deserialize)]
struct Trainer<T> {
    #[allow(dead_code)]
    trainer: T,
}

/// The error of the first tagged table whose variant does not read, with its line and key; `None`
/// when every tagged table reads (the mistake is elsewhere) or one cannot be probed.
pub(super) fn locate(text: &str) -> Option<toml::de::Error> {
    let document: toml::Table = toml::from_str(text).ok()?;
    for table in ["task", "model", "strategy", "generator", "trainer"] {
        let Some(kind) = document.get(table).and_then(|t| t.get("type")).and_then(|t| t.as_str()) else {
            continue;
        };
        let Some(blanked) = blank_type_line(text, table) else { continue };
        let error = match (table, kind) {
            ("task", "addition") => probe::<Task<AdditionConfig>>(&blanked),
            ("task", "arith-word") => probe::<Task<ArithWordConfig>>(&blanked),
            ("task", "jsonl") => probe::<Task<JsonlConfig>>(&blanked),
            ("model", "embedded") => probe::<Model<EmbeddedModelConfig>>(&blanked),
            ("model", "pretrained") => probe::<Model<PretrainedModelConfig>>(&blanked),
            ("strategy", "star") => probe::<Strategy<StarConfig>>(&blanked),
            ("strategy", "rest") => probe::<Strategy<RestConfig>>(&blanked),
            ("strategy", "rest-em") => probe::<Strategy<RestEmConfig>>(&blanked),
            ("strategy", "self-play") => probe::<Strategy<SelfPlayConfig>>(&blanked),
            ("generator", "openai") => probe::<Generator<OpenAiGeneratorConfig>>(&blanked),
            ("trainer", "command") => probe::<Trainer<CommandTrainerConfig>>(&blanked),
            _ => None,
        };
        if error.is_some() {
            return error;
        }
    }
    None
}

fn probe<T: DeserializeOwned>(text: &str) -> Option<toml::de::Error> {
    toml::from_str::<T>(text).err()
}

/// `text` with the `type = ...` line of `[table]` emptied; `None` when it is not on a line of its
/// own under the table's header.
fn blank_type_line(text: &str, table: &str) -> Option<String> {
    let header = format!("[{table}]");
    let mut inside = false;
    let mut found = false;
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                inside = trimmed.starts_with(&header)
                    && trimmed[header.len()..].trim_start().chars().next().is_none_or(|c| c == '#');
            } else if inside && !found {
                let key = trimmed.split('=').next().unwrap_or("").trim();
                if trimmed.contains('=') && (key == "type" || key == "\"type\"") {
                    found = true;
                    return "";
                }
            }
            line
        })
        .collect();
    found.then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_inside_a_tagged_table_is_found_at_its_line() {
        let text = "name = \"x\"\n[model]\ntype = \"pretrained\"\npath = \"m.gguf\"\nmax-batch = \"many\"\n";
        let err = locate(text).expect("found").to_string();
        assert!(err.contains("line 5") && err.contains("max-batch"), "{err}");
    }

    #[test]
    fn nothing_is_reported_when_the_tables_read() {
        let text = "name = \"x\"\n[model]\ntype = \"pretrained\"\npath = \"m.gguf\"\n";
        assert!(locate(text).is_none());
    }
}
