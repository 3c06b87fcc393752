"""Local tampering of real X-rays (issue 16): where the lungs are, how edits are made, how they are found."""
