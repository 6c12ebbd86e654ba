"""Scoring a run: COCO AP and Dice of its test slices, the 3-D metrics on whole volumes, and make predict."""
