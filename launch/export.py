"""Export a checkpoint's LoRA adapters in the Hugging Face PEFT format (= ``genalign-export``).

    python launch/export.py --config=configs/sst2.py:embedded \
        --checkpoint=outputs/sst2-embedded/checkpoint_epoch_5 --out=adapters/sst2

Then, with transformers + peft: ``PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base),
"adapters/sst2")`` (``.merge_and_unload()`` folds the adapter into the weights).
"""

from genalign_jax.run.cli import export_main

if __name__ == "__main__":
    export_main()
