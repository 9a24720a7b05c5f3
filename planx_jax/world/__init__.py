"""The synthetic video world of `planx demo` as a library: scenes and episodes, the demo's frozen encoders and the
conditions they give, the verifiable judge and rewards, the RL environment and the world's settings.

Stands on data/, models/, the TA-Tok / umT5 facades and the reward registry; demo/, rl/ and commands/ stand on it,
never the other way (tests/test_layering.py).
"""
