"""The CPU demo: a tiny Plan-X trained on the built-in synthetic world, its held-out videos and the judge's table.
Built only from the library's training, sampling and model code; `planx demo` runs it."""
