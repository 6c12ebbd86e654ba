"""One run: its config, data, weights, training and the lifecycle that records it in result.json."""
