"""tagstream's online side: Kafka in, micro-batches through the compiled model, labels out."""
