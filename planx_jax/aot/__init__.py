"""Ahead-of-time compile reports for TPU topologies from any host: per-device memory, FLOPs, collectives and the
roofline of one compiled train step (`compile_report`), from its HLO text (`hlo_stats`)."""
