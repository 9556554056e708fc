-- What a worker's machine has (GPUs, cores, memory, labels; JSON), as it registered it: the
-- dispatcher hands it only the inputs of functions whose requests it fits.
ALTER TABLE workers ADD COLUMN machine TEXT;
