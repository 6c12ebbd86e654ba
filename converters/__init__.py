"""NIfTI CT volumes and their masks -> a converted COCO dataset (dataset.json, PNG slices, split files); the make targets' launcher and the cleaner."""
