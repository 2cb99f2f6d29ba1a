"""Fine-tuning ViCLIP on the Trainer of viclip.train: the base (base.py, data.py), retrieval, recognition.

Above viclip.train and viclip.eval: it trains with the first and evaluates every epoch with the second.
"""
