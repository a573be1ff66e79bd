"""bpy-dependent builders (mesh, shape keys, animation, camera, USD), called by importer.py."""
