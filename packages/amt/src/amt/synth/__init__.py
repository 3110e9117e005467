"""Versioned synthetic-hand generators. ``amt.synthetic`` is generator 2 (coloured stick hands); this
subpackage holds generator 3: a skinned, shaded hand over real photographs, one hand per frame seen by the 8
cameras of its sequence. Select it with ``data.synthetic.generator_version: 3`` or
``amt make-synthetic --generator_version 3``."""
