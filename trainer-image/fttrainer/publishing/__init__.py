"""Where the tuned model goes once training is done: the Hugging Face Hub (hub), or an OCI
image a kubelet can mount (oci) annotated with where the model came from (lineage); oci also
pulls such an image back for an oci:// model, tokenizer or adapter."""
