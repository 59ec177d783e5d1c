"""The only package that imports ray: Data actor adapters and Train/Tune builders."""
