"""The shapes world: a toy world simple enough that a program can read an image and say whether it is right.

`toy.shapes` draws scenes (one flat object on a flat background) deterministically from a seed,
`toy.analyzer` reads any RGB image back into the same attributes, and `toy.train_shapes` trains
the built-in `shapes-sd15` model on the scenes. The inference engine never imports this package:
it is the yardstick the product's pixels are held to (content tests, `bench/quality_bench.py`).
"""
