#!/usr/bin/env python3
"""Fine-tune a PEFT LoRA adapter on one flywheel training set, with TRL (under accelerate or not).

flywheel's `[trainer] type = "command"` runs this once per training set (examples/gsm8k-vllm-trl.toml):

    accelerate launch examples/trl/sft.py --data SET.jsonl --start CHECKPOINT --out DIR \
        --steps N --batch-size B --learning-rate LR --seed S

--data   flywheel's chat JSONL: one {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} per
         line; the loss is on the last (assistant) turn only, as flywheel's own trainer computes it.
--start  a PEFT adapter directory (flywheel's iteration 0 writes one: fresh adapters, equal to the base;
         its adapter_config.json names the base model) or a full Hugging Face model directory.
--out    where the adapter goes (adapter_config.json + adapter_model.safetensors, base recorded as an
         absolute path), with train-summary.json (steps, first and last loss, target tokens, seconds),
         which flywheel reads into its metrics.

--batch-size is the global batch (sequences per optimiser step over all processes).
"""
import argparse
import json
import math
import os
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--start", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-device-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    return p.parse_args()


def read_examples(path):
    """flywheel's chat examples as TRL's conversational prompt-completion rows."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            if not messages or messages[-1]["role"] != "assistant":
                raise SystemExit(f"{path}:{number}: the last message must be the assistant's")
            rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    if not rows:
        raise SystemExit(f"{path}: no example")
    return rows


def main():
    args = parse_args()
    # Imported here so that --help works without the heavy packages.
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.time()
    adapter_config = os.path.join(args.start, "adapter_config.json")
    if os.path.exists(adapter_config):
        base_path = PeftConfig.from_pretrained(args.start).base_model_name_or_path
    else:
        base_path = args.start
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=dtype)
    if os.path.exists(adapter_config):
        model = PeftModel.from_pretrained(model, args.start, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = min(args.per_device_batch, max(1, args.batch_size // world))
    accumulation = max(1, math.ceil(args.batch_size / (per_device * world)))
    config = SFTConfig(
        output_dir=os.path.join(args.out, "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=args.max_length,
        completion_only_loss=True,
        bf16=dtype == torch.bfloat16,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(read_examples(args.data)),
                         processing_class=tokenizer)
    result = trainer.train()
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(args.out)
        # Record the base as an absolute path, so that the adapter loads from anywhere.
        path = os.path.join(args.out, "adapter_config.json")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        saved["base_model_name_or_path"] = os.path.abspath(base_path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(saved, f, indent=2)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        tenth = max(1, len(losses) // 10)
        summary = {
            "steps": result.global_step,
            "first_loss": sum(losses[:tenth]) / tenth if losses else 0.0,
            "last_loss": sum(losses[-tenth:]) / tenth if losses else 0.0,
            "target_tokens": int(trainer.state.num_input_tokens_seen or 0),
            "seconds": time.time() - started,
        }
        with open(os.path.join(args.out, "train-summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
