// Read dicomnode's SEG and SR objects with the Cornerstone3D adapters, as OHIF does.
//
// Usage: node parse.mjs JOBS.json  (JOBS: [{"file": path, "sources": [paths of its source images]}])
// Prints one JSON array: per job, the SEG's segments (number, label, Recommended Display
// CIELab Value) and how many source images they cover, or the SR's tool states per tool
// type, and every warning or error the adapters logged while reading it ("problems").
// The source images are registered with a metadata provider built from their headers, so
// SEG frames map onto them and SR coordinates turn into patient coordinates.
import fs from 'node:fs';
import dcmjs from 'dcmjs';

const problems = [];
// The adapters log through loglevel, which binds console methods when a logger is made:
// capture before they are imported.
for (const level of ['warn', 'error']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    problems.push(`${level}: ${args.map((a) => (a && a.stack) || String(a)).join(' ')}`);
    original(...args);
  };
}
const csCore = await import('@cornerstonejs/core');
const adapters = await import('@cornerstonejs/adapters');
const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function read(path) {
  const buffer = fs.readFileSync(path);
  const arrayBuffer = buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const dicom = DicomMessage.readFile(arrayBuffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicom.dict);
  dataset._meta = DicomMetaDictionary.namifyDataset(dicom.meta);
  return { dataset, arrayBuffer };
}

const modules = new Map();

// One frame of a multi-frame image as the single-frame view a viewer's metadata has of
// it: its plane position and the shared orientation and pixel spacing, at the top level.
function frameOf(ds, index) {
  const item = (sequence) => (Array.isArray(sequence) ? sequence[0] : sequence) || {};
  const shared = item(ds.SharedFunctionalGroupsSequence);
  const perFrame = (ds.PerFrameFunctionalGroupsSequence || [])[index] || {};
  const group = (name) => ({ ...item(shared[name]), ...item(perFrame[name]) });
  const measures = group('PixelMeasuresSequence');
  return {
    ...ds,
    ImagePositionPatient: group('PlanePositionSequence').ImagePositionPatient,
    ImageOrientationPatient: group('PlaneOrientationSequence').ImageOrientationPatient,
    PixelSpacing: measures.PixelSpacing,
    SliceThickness: measures.SliceThickness,
  };
}

function register(imageId, ds) {
  const iop = (ds.ImageOrientationPatient || [1, 0, 0, 0, 1, 0]).map(Number);
  const spacing = (ds.PixelSpacing || [1, 1]).map(Number);
  modules.set(imageId, {
    instance: ds,
    imagePlaneModule: {
      frameOfReferenceUID: ds.FrameOfReferenceUID,
      rows: ds.Rows,
      columns: ds.Columns,
      imageOrientationPatient: iop,
      rowCosines: iop.slice(0, 3),
      columnCosines: iop.slice(3),
      imagePositionPatient: (ds.ImagePositionPatient || [0, 0, 0]).map(Number),
      pixelSpacing: spacing,
      rowPixelSpacing: spacing[0],
      columnPixelSpacing: spacing[1],
      sliceThickness: Number(ds.SliceThickness || 1),
    },
    imagePixelModule: {
      rows: ds.Rows,
      columns: ds.Columns,
      samplesPerPixel: ds.SamplesPerPixel || 1,
      bitsAllocated: ds.BitsAllocated,
      bitsStored: ds.BitsStored,
      highBit: ds.HighBit,
      pixelRepresentation: ds.PixelRepresentation,
      photometricInterpretation: ds.PhotometricInterpretation,
    },
    generalSeriesModule: {
      seriesInstanceUID: ds.SeriesInstanceUID,
      modality: ds.Modality,
      studyInstanceUID: ds.StudyInstanceUID,
    },
    generalImageModule: { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: ds.InstanceNumber },
    sopCommonModule: { sopClassUID: ds.SOPClassUID, sopInstanceUID: ds.SOPInstanceUID },
    generalStudyModule: { studyInstanceUID: ds.StudyInstanceUID },
  });
}
const provider = { get: (type, imageId) => modules.get(imageId)?.[type] };
csCore.metaData.addProvider((type, imageId) => provider.get(type, imageId), 10000);

async function parse(job, number) {
  problems.length = 0;
  modules.clear();
  // An imageId per frame; a multi-frame image's as "<base>?frame=N" (1-based), the
  // convention by which the adapters find a Referenced Frame Number's image, as OHIF's
  // wadors: ".../frames/N" is.
  const imageIds = [];
  const frameNumbers = new Map();
  job.sources.forEach((path, n) => {
    const ds = read(path).dataset;
    const frames = Number(ds.NumberOfFrames || 1);
    if (frames > 1 && ds.PerFrameFunctionalGroupsSequence) {
      for (let k = 1; k <= frames; k += 1) {
        const imageId = `dicomnode:${number}:${n}?frame=${k}`;
        register(imageId, frameOf(ds, k - 1));
        frameNumbers.set(imageId, k);
        imageIds.push(imageId);
      }
    } else {
      const imageId = `dicomnode:${number}:${n}`;
      register(imageId, ds);
      frameNumbers.set(imageId, 1);
      imageIds.push(imageId);
    }
  });
  const result = { file: job.file };
  try {
    const { dataset, arrayBuffer } = read(job.file);
    if (dataset.Modality === 'SEG') {
      const seg = await adapters.adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
        imageIds,
        arrayBuffer,
        { metadataProvider: provider },
      );
      result.segments = [...seg.segMetadata.data.entries()]
        .filter(([, s]) => s)
        .map(([n, s]) => ({ number: n, label: s.SegmentLabel, cielab: s.RecommendedDisplayCIELabValue }));
      result.images_with_segments = seg.segmentsOnFrame.filter((s) => s && s.length).length;
    } else {
      const sopToImageId = {};
      imageIds.forEach((id) => {
        sopToImageId[`${modules.get(id).instance.SOPInstanceUID}:${frameNumbers.get(id)}`] = id;
      });
      const state = adapters.adaptersSR.Cornerstone3D.MeasurementReport.generateToolState(
        dataset,
        sopToImageId,
        provider,
      );
      result.tools = Object.fromEntries(
        Object.entries(state).map(([tool, items]) => [
          tool,
          items.map((m) => ({
            finding: m.finding?.CodeMeaning ?? null,
            points: m.annotation?.data?.handles?.points?.length ?? 0,
            image: m.annotation?.metadata?.referencedImageId ?? null,
          })),
        ]),
      );
    }
  } catch (error) {
    problems.push(`thrown: ${error.stack || error}`);
  }
  result.problems = [...problems];
  return result;
}

const jobs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const results = [];
for (const [n, job] of jobs.entries()) {
  results.push(await parse(job, n));
}
process.stdout.write(`${JSON.stringify(results)}\n`);
