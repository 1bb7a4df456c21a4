"""The PyTorch side of `cargo bench -p cloze-benches --bench mlm_reference`.

Trains Hugging Face's BertForMaskedLM (same config.json as Cloze's model) on the very batches
Cloze trained on, in the same order, with the same cloze recipe (15% chosen; 80% [MASK], 10%
random, 10% kept), AdamW (no decay on biases and LayerNorm weights), warmup then linear decay,
and clipping; then scores the same masked held-out batches. Prints one JSON object.

Usage: python3 mlm_reference.py WORK_DIR   (needs torch and transformers)
"""

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM


def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mask(batch, meta, generator):
    """BERT's recipe, as DataCollatorForLanguageModeling draws it."""
    labels = batch.clone()
    special = torch.zeros_like(batch, dtype=torch.bool)
    for token in meta["special_ids"]:
        special |= batch == token
    probability = torch.full(batch.shape, meta["mask_rate"])
    probability.masked_fill_(special, 0.0)
    chosen = torch.bernoulli(probability, generator=generator).bool()
    labels[~chosen] = -100
    inputs = batch.clone()
    replaced = torch.bernoulli(torch.full(batch.shape, 0.8), generator=generator).bool() & chosen
    inputs[replaced] = meta["mask_id"]
    randomised = torch.bernoulli(torch.full(batch.shape, 0.5), generator=generator).bool() & chosen & ~replaced
    inputs[randomised] = torch.randint(meta["vocab_size"], batch.shape, generator=generator)[randomised]
    return inputs, labels


def main():
    work = Path(sys.argv[1])
    meta = json.loads((work / "meta.json").read_text())
    torch.set_num_threads(meta["threads"])
    torch.manual_seed(meta["seed"])
    config = BertConfig(**json.loads((work / "cloze" / "config.json").read_text()))
    model = BertForMaskedLM(config)
    model.train()

    length = meta["max_len"]
    train = torch.from_numpy(np.fromfile(work / "train.u32", dtype=np.uint32).astype(np.int64)).view(-1, length)
    no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or "LayerNorm." in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or "LayerNorm." in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": meta["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=meta["learning_rate"], betas=(0.9, 0.999), eps=1e-8,
    )
    steps, warmup = meta["steps"], meta["warmup_steps"]

    def schedule(step):  # Cloze's: (step+1)/warmup, then linear to zero at max_steps
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(meta["seed"])
    batch_size = meta["batch_size"]
    rates, peak, losses = [], rss_mb(), []
    for step in range(steps):
        started = time.perf_counter()
        batch = train[step * batch_size:(step + 1) * batch_size]
        inputs, labels = mask(batch, meta, generator)
        loss = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), meta["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(batch.numel() / (time.perf_counter() - started))
        losses.append(loss.item())
        peak = max(peak, rss_mb())

    model.eval()
    inputs = torch.from_numpy(np.fromfile(work / "eval_inputs.u32", dtype=np.uint32).astype(np.int64)).view(-1, length)
    labels = torch.from_numpy(np.fromfile(work / "eval_labels.i32", dtype=np.int32).astype(np.int64)).view(-1, length)
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x, y = inputs[start:start + batch_size], labels[start:start + batch_size]
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
            chosen = y != -100
            loss_sum += torch.nn.functional.cross_entropy(logits[chosen], y[chosen], reduction="sum").item()
            correct += (logits[chosen].argmax(-1) == y[chosen]).sum().item()
            total += chosen.sum().item()
    json.dump({
        "tokens_per_second_median": statistics.median(rates[min(10, len(rates) - 1):]),
        "peak_rss_mb": peak,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": statistics.mean(losses[-20:]),
        "eval_accuracy": correct / total,
        "eval_loss": loss_sum / total,
        "eval_masked_tokens": total,
        "torch": torch.__version__,
    }, sys.stdout)


if __name__ == "__main__":
    main()
