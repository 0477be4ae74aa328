"""The model as the recipe loads and shapes it: where its weights come from (sources), its
attention kernel for packed batches (attention), which weights train (spectrum), and how much
activation memory it needs and saves by recomputing layers (memory_plan, recompute)."""
