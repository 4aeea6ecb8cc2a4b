"""cinelora package."""
