"""ptqkit: post-training int8 quantization of HF BERT-family classifiers for CPU servers."""
