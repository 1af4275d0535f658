"""`mttt pretrain`: data, DeepSpeed engine, schedule, checkpoints, signals, logging, the loop."""
