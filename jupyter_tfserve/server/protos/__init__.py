"""Protocol messages the engine builds itself, rather than importing another project's package."""
