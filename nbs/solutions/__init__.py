"""Reference solutions of the chapters' exercises, one module per chapter (chNN.py).

Each function has the name and signature of the chapter's stub; `tests/test_exercises.py` runs every
one through its checker. Try the exercise before reading these.
"""
