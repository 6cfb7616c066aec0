"""Time to first token with SDPA vs flashprefill in a transformers model.

    python3 examples/transformers_ttft.py --model /path/to/checkpoint --lengths 32K,64K
    python3 examples/transformers_ttft.py --layers 4 --lengths 32K,128K      # no checkpoint: random weights

Without a checkpoint a randomly initialised Llama-3.1-8B-shaped model (a few layers) is used. Random
weights give nearly uniform attention, hence little sparsity: its density and speed-up say nothing about
trained models, and the script says so in its output.
"""
import argparse
import time

import torch

import flashprefill.integrations.transformers as fpt


def parse_length(text):
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def load(args, attn_implementation):
    import transformers
    if args.model:
        return transformers.AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=attn_implementation,
                                                                  torch_dtype=torch.bfloat16).cuda().eval()
    config = transformers.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=262144,
                                      rope_theta=500000.0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation,
                                                      torch_dtype=torch.bfloat16).cuda().eval()


def ttft_ms(model, ids, repeats):
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first run warms up
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times[1:])[len(times[1:]) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local checkpoint path; default: random Llama-3.1-8B shape")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="32K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=None, help="default: the paper's value for the model family")
    args = parser.parse_args()
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = lambda x, **_: x
    if not args.model:
        print("NOTE: random weights -> nearly uniform attention -> little sparsity; these numbers are not the method's "
              "speed on a trained model. Pass --model for that.")
    fpt.configure(alpha=args.alpha, threshold=4096)
    sdpa_model = load(args, "sdpa")
    ours_model = load(args, "flashprefill")
    vocab = sdpa_model.config.vocab_size
    for length in tqdm([parse_length(x) for x in args.lengths.split(",")], desc="lengths"):
        ids = torch.randint(0, vocab, (1, length), device="cuda")
        sdpa = ttft_ms(sdpa_model, ids, args.repeats)
        fpt.configure(collect_density=False)
        ours = ttft_ms(ours_model, ids, args.repeats)
        fpt.settings.densities.clear()
        fpt.configure(collect_density=True)
        with torch.no_grad():
            ours_model(ids, logits_to_keep=1)
        fpt.configure(collect_density=False)
        densities = ", ".join(f"L{d['layer']}: {100 * d['density']:.1f}%" for d in fpt.settings.densities)
        print(f"L={length}: TTFT sdpa {sdpa:.1f} ms, flashprefill {ours:.1f} ms ({sdpa / ours:.2f}x); density per layer: {densities}")


if __name__ == "__main__":
    main()
