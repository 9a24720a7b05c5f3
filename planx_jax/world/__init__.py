"""The synthetic video world of `planx demo` as a library: scenes and episodes, the demo's frozen encoders and the
conditions they give, the verifiable judge and rewards, the RL environment and the world's settings.

Stands on data/, the component facades and sampling; demo/, rl/ and commands/ stand on it, never the other way.
"""
