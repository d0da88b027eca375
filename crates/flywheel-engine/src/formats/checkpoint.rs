//! Checkpoints: `model.safetensors` + `config.json` + `tokenizer.json` in one directory.
//!
//! This is the Hugging Face layout, so a checkpoint written here opens in `transformers` (the
//! safetensors header carries `"format": "pt"`, which `transformers` insists on) and SmolLM2's
//! directory loads here. Weights are written in `f32`; `f32`, `f64`, `f16` and `bf16` files are
//! read and converted. Files are written under a temporary name and renamed, so an interrupted
//! save never leaves a half-written checkpoint behind a valid name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::DecoderModel;
use crate::text::tokenizer::TextTokenizer;

/// Weights file name inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Config file name inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer file name inside a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io { path: path.to_path_buf(), source }
}

/// Writes every parameter of `model` to `path` as `f32` safetensors, Hugging Face names and
/// values, in [`crate::parameter_shapes`] order.
pub fn save_weights(model: &DecoderModel, path: &Path) -> Result<()> {
    let mut tensors = model.named_tensors()?;
    let ordered: Vec<(String, Tensor)> = crate::model::parameter_shapes(model.config())
        .into_iter()
        .filter_map(|(name, _)| tensors.remove(&name).map(|t| (name, t)))
        .collect();
    save_tensors(path, &ordered)
}

/// Writes named tensors to `path` as `f32` safetensors (with `"format": "pt"`), atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut blobs = Vec::new();
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?;
        let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| EngineError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = scratch_path(path)?;
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| EngineError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    tmp.persist(path).map_err(|e| EngineError::Io { path: path.to_path_buf(), source: e.error })
}

/// Reads every tensor of a safetensors file, keeping its dtype (`f32`, `f64`, `f16` or `bf16`).
pub fn load_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(EngineError::Weights {
                    path: path.to_path_buf(),
                    name,
                    reason: format!("dtype {other:?} is not a float type this engine reads"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
        check_finite(path, &name, &t)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes `model` and `tokenizer` as a checkpoint directory (created if needed).
pub fn save_checkpoint(dir: &Path, model: &DecoderModel, tokenizer: &TextTokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    save_weights(model, &dir.join(MODEL_FILE))?;
    let config = dir.join(CONFIG_FILE);
    let tmp = scratch_path(&config)?;
    model.config().save(&tmp)?;
    tmp.persist(&config).map_err(|e| EngineError::Io { path: config.clone(), source: e.error })?;
    let tok = dir.join(TOKENIZER_FILE);
    let tmp = scratch_path(&tok)?;
    tokenizer.save(&tmp)?;
    tmp.persist(&tok).map_err(|e| EngineError::Io { path: tok.clone(), source: e.error })?;
    Ok(())
}

/// Reads a checkpoint directory: config, weights (checked against the config), tokenizer. The
/// weights may be one `model.safetensors` or several shards (`model-00001-of-00002.safetensors`, …):
/// every `*.safetensors` file of the directory except a LoRA adapter's is read.
pub fn load_checkpoint(dir: &Path) -> Result<(DecoderModel, TextTokenizer)> {
    let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".safetensors") && !name.starts_with("adapter_model")
        })
        .collect();
    files.sort();
    let Some(first) = files.first().cloned() else {
        return Err(EngineError::Weights {
            path: dir.to_path_buf(),
            name: "*".into(),
            reason: "no .safetensors file in the directory".into(),
        });
    };
    let mut tensors = HashMap::new();
    for file in &files {
        tensors.extend(load_weights(file)?);
    }
    let origin = if files.len() == 1 { first } else { dir.to_path_buf() };
    let model = DecoderModel::from_tensors(&config, tensors, &origin)?;
    let tokenizer = TextTokenizer::from_file(&dir.join(TOKENIZER_FILE))?;
    Ok((model, tokenizer))
}

/// Tokenizer settings file of a Hugging Face directory; holds the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The chat template of `dir/tokenizer_config.json`: its `chat_template` string, or the template
/// named `default` when it is a list of named templates. `None` when there is no such file or key.
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| EngineError::Json { path: path.clone(), source })?;
    let bad = |reason: &str| EngineError::Template(format!("{}: `chat_template`: {reason}", path.display()));
    match value.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
            .map(Some)
            .ok_or_else(|| bad("a list without a `default` template")),
        Some(_) => Err(bad("neither a string nor a list of named templates")),
    }
}

/// Writes `dir/tokenizer_config.json` with the chat template and the special tokens' texts, as
/// `transformers` reads them.
pub fn write_tokenizer_config(dir: &Path, chat_template: &str, bos_token: &str, eos_token: &str) -> Result<()> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    let value = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": eos_token,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 8192,
    });
    let text =
        serde_json::to_string_pretty(&value).map_err(|source| EngineError::Json { path: path.clone(), source })?;
    std::fs::write(&path, text).map_err(io_err(&path))
}

/// A scratch file beside `path` with a name of its own (removed unless persisted), so that an
/// atomic write never touches a file it did not make.
pub(crate) fn scratch_path(path: &Path) -> Result<tempfile::TempPath> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".flywheel-").suffix(".tmp");
    // The mode `File::create` gives (0o666 less the umask), not a scratch file's owner-only 0o600:
    // a saved model is for whoever may read its directory (a server under another user, a container).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir).map(tempfile::NamedTempFile::into_temp_path).map_err(io_err(path))
}

/// Refuses a tensor holding NaN or infinity (a damaged file): training and sampling on it would
/// only produce NaN later, far from the cause.
pub fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(EngineError::Weights {
            path: path.to_path_buf(),
            name: name.to_owned(),
            reason: format!(
                "holds {} at element {i} ({} of {} elements are not finite): the file is damaged",
                values[i],
                values.iter().filter(|x| !x.is_finite()).count(),
                values.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::TokenIds;

    fn tiny() -> (DecoderModel, TextTokenizer) {
        let tok = TextTokenizer::char_level("0123456789+=").unwrap();
        let mut c = ModelConfig::tiny(tok.vocab_size());
        c.hidden_size = 32;
        c.intermediate_size = 48;
        c.num_hidden_layers = 2;
        c.eos_token_id = Some(TokenIds::One(2));
        (DecoderModel::new_random(&c, 3).unwrap(), tok)
    }

    fn logits(model: &DecoderModel) -> Vec<f32> {
        let ids = Tensor::new(&[[3u32, 5, 7, 11, 13]], &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4]], &Device::Cpu).unwrap();
        model.forward(&ids, &pos, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn save_then_load_gives_identical_logits() {
        let (model, tok) = tiny();
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &model, &tok).unwrap();
        let (back, back_tok) = load_checkpoint(dir.path()).unwrap();
        assert_eq!(logits(&back), logits(&model));
        assert_eq!(back.config(), model.config());
        assert_eq!(back_tok.encode("12+3=").unwrap(), tok.encode("12+3=").unwrap());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 3, "no scratch file left: {left:?}");
    }

    #[test]
    fn saving_leaves_a_users_tmp_file_alone() {
        let (model, tok) = tiny();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors.tmp"), "mine").unwrap();
        std::fs::write(dir.path().join("config.tmp"), "mine too").unwrap();
        save_checkpoint(dir.path(), &model, &tok).unwrap();
        assert_eq!(std::fs::read(dir.path().join("model.safetensors.tmp")).unwrap(), b"mine");
        assert_eq!(std::fs::read(dir.path().join("config.tmp")).unwrap(), b"mine too");
    }

    #[test]
    fn weights_that_are_not_finite_are_refused_naming_the_tensor() {
        let (model, _) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        let mut tensors: Vec<(String, Tensor)> = model.named_tensors().unwrap().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let (name, t) = tensors.iter_mut().find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight").unwrap();
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[5] = f32::NAN;
        values[7] = f32::INFINITY;
        *t = Tensor::from_vec(values, t.dims(), &Device::Cpu).unwrap();
        let name = name.clone();
        save_tensors(&path, &tensors).unwrap();
        let err = load_weights(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("tensor `{name}`")) && err.contains("NaN at element 5"), "{err}");
        assert!(err.contains("2 of") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn weights_file_has_hf_names_and_pt_metadata() {
        let (model, _) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        save_weights(&model, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let names = load_weights(&path).unwrap();
        assert!(names.contains_key("model.layers.1.self_attn.k_proj.weight"));
        assert!(names.contains_key("model.norm.weight"));
        assert!(!names.contains_key("lm_head.weight"), "tied embeddings are stored once");
    }

    #[test]
    fn missing_or_misshapen_tensor_is_named() {
        let (model, _) = tiny();
        let mut tensors = model.named_tensors().unwrap();
        tensors.remove("model.layers.1.mlp.up_proj.weight");
        let err = DecoderModel::from_tensors(model.config(), tensors, Path::new("x.safetensors")).unwrap_err();
        assert_eq!(err.to_string(), "x.safetensors: tensor `model.layers.1.mlp.up_proj.weight`: missing");
        let mut tensors = model.named_tensors().unwrap();
        tensors.insert("model.norm.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
        let err = DecoderModel::from_tensors(model.config(), tensors, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("shape [3], expected [32]"), "{err}");
    }

    #[test]
    fn bf16_weights_are_converted() {
        let (model, _) = tiny();
        let tensors: HashMap<String, Tensor> =
            model.named_tensors().unwrap().into_iter().map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap())).collect();
        let back = DecoderModel::from_tensors(model.config(), tensors, Path::new("bf16")).unwrap();
        let (a, b) = (logits(&model), logits(&back));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 0.05));
    }
}
