"""Rich output for people: the renderers are the only modules that import rich."""
