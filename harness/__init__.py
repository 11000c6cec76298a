"""lguest-harness harness: pytest plugin, guest fixtures, console API, kernel and image builders."""
