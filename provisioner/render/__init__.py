"""Turning the PBX model into Asterisk config: typed views in, text files out. No I/O."""
