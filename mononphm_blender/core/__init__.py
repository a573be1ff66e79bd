"""bpy-free helpers of the add-on (unit-tested without Blender): job runner, command lines, key layouts."""
